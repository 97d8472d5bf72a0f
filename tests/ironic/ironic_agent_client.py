"""Run with ironic's Python: ironic's own agent client and the plugin's, against one agent.

    python -m tests.ironic.ironic_agent_client AGENT_URL AGENT_CERT CLIENT_CERT CLIENT_KEY

Asks the agent for its command list (``get_commands_status``, what ironic asks before
every step) once with ironic's ``AgentClient`` and once with the plugin's
``ConductorAgentClient`` in ``mtls`` trust, and prints JSON: what each got, and which
client ``agent_client.get_client(task)`` hands ironic's code once one of the
interface's methods has seen the task. The tests read it (``test_passive_mtls.py``).
"""

from __future__ import annotations

import json
import sys
import types
from typing import Any


def main(argv: list[str]) -> int:
    url, agent_cert, client_cert, client_key = argv
    from ironic.conf import CONF
    from ironic.drivers.modules import agent_client

    from conductor.ironic import deploy

    CONF.set_override("trust_mode", "mtls", "tacet")
    CONF.set_override("client_cert_file", client_cert, "tacet")
    CONF.set_override("client_key_file", client_key, "tacet")
    node = types.SimpleNamespace(
        uuid="mtls-check",
        driver_internal_info={"agent_url": url, "agent_verify_ca": agent_cert},
        driver_info={},
    )
    results: dict[str, Any] = {}
    clients = {"ironic": agent_client.AgentClient(), "certified": deploy.ConductorAgentClient()}
    for name, client in clients.items():
        try:
            commands = client.get_commands_status(node, retry_connection=False, expect_errors=True)
            results[name] = {"commands": [c.get("command_name") for c in commands]}
        except Exception as exc:  # what ironic's code would see
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    task = types.SimpleNamespace(node=node)
    deploy.TacetPassiveDeploy().should_manage_boot(task)
    results["get_client"] = type(agent_client.get_client(task)).__name__
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
