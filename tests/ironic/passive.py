"""The passive-mode harness: ironic with Tacet's plugin, the ramdisk endpoints off.

:data:`PASSIVE_OVERRIDES` makes the all-in-one ironic of ``launcher.py`` load the
``tacet-manual-management`` hardware type with its ``tacet-pxe`` boot and
``tacet-passive`` deploy interfaces (installed into ironic's
virtualenv by ``tools/setup-ironic``), refuse lookup, heartbeat and
``continue_inspection`` (``[api] enable_ramdisk_endpoints = False``) and poll every 2 s.
:class:`PassiveMachine` enrolls a node with those interfaces and its agent's address in
``driver_info/tacet_address``; its agent boots with the PXE config ironic wrote, which
carries no ``ipa-api-url``, so it starts in passive mode and listens on that address.
Every passive agent runs under an outbound audit (``outbound.py``): after it stopped,
:meth:`PassiveAgent.outbound` lists every IP destination it connected or sent to.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.ports import free_port

from .launcher import IronicError, IronicService
from .machine import Machine
from .node import LocalAgent
from .outbound import Outbound, audit_prefix, outbound, read_complete

PASSIVE_OVERRIDES = {
    "DEFAULT": {
        "enabled_hardware_types": "manual-management,fake-hardware,tacet-manual-management",
        "enabled_boot_interfaces": "pxe,tacet-pxe,fake",
        "enabled_deploy_interfaces": "direct,tacet-passive,fake",
    },
    "api": {"enable_ramdisk_endpoints": "False"},
    "tacet": {"poll_interval": "2", "poll_jitter": "0.5", "poll_timeout": "5"},
}


class PassiveAgent(LocalAgent):
    """A boot whose agent must run passive: it listens on the port ironic was told."""

    def __init__(
        self,
        workdir: Path,
        boot_cmdline: str,
        disk: Any,
        port: int,
        settings: dict[str, str] | None = None,
    ) -> None:
        super().__init__(workdir, boot_cmdline, disk, settings)
        self.port = port
        self.audit_log = workdir / "outbound.strace"

    def wrapper(self) -> list[str]:
        return audit_prefix(self.audit_log)

    def outbound(self) -> list[Outbound]:
        """Every IP destination of this boot's agent; only once it has stopped."""
        if self.process is None or self.process.poll() is None:
            raise IronicError("the outbound audit is complete only once the agent stopped")
        return outbound(read_complete(self.audit_log, self.process.pid))

    def problem(self) -> str | None:
        if self.process is None:
            return None
        if self.process.poll() is not None:
            return f"the agent exited with {self.process.returncode}\n{self.tail()}"
        text = self.log_text()
        if " mode=" in text and " mode=passive " not in text:
            return f"the agent did not start in passive mode\n{self.tail()}"
        return None


class PassiveMachine(Machine):
    """A node on ``tacet-pxe`` / ``tacet-passive``, its agent at 127.0.0.1:<port>."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.agent_port = free_port()
        self.identity_macs: list[str] | None = None  # ports to enroll (default: the host's)
        self.agent_settings: dict[str, str] = {}  # what every boot's image bakes in

    def enroll(
        self,
        boot_mode: str = "bios",
        instance_info: dict[str, Any] | None = None,
        automated_clean: bool = False,
    ) -> str:
        uuid = super().enroll(boot_mode, instance_info, automated_clean)
        self.api.patch(
            f"/v1/nodes/{uuid}",
            [
                {"op": "replace", "path": "/driver", "value": "tacet-manual-management"},
                {"op": "replace", "path": "/boot_interface", "value": "tacet-pxe"},
                {"op": "replace", "path": "/deploy_interface", "value": "tacet-passive"},
                {
                    "op": "add",
                    "path": "/driver_info/tacet_address",
                    "value": f"127.0.0.1:{self.agent_port}",
                },
            ],
        )
        if self.identity_macs is not None:
            for port in self.api.get(f"/v1/nodes/{uuid}/ports")["ports"]:
                self.api.delete(f"/v1/ports/{port['uuid']}")
            for mac in self.identity_macs:
                self.api.post("/v1/ports", {"node_uuid": uuid, "address": mac})
        return uuid

    def boot_agent(self, settings: dict[str, str] | None = None) -> LocalAgent:
        from .node import ramdisk_cmdline

        mac = (self.identity_macs or self.macs)[0]  # ironic wrote the PXE config per port
        cmdline = ramdisk_cmdline(self.ironic.workdir / "tftp", mac)
        if "ipa-api-url" in cmdline or "ipa-inspection-callback-url" in cmdline:
            raise IronicError(f"the passive boot has a call-back URL: {cmdline}")
        agent = PassiveAgent(
            self.workdir / f"boot-{len(self.agents) + 1}",
            cmdline,
            self.disk,
            self.agent_port,
            {**self.agent_settings, **(settings or {})},
        )
        self.agents.append(agent)
        agent.start()
        return agent


def ramdisk_endpoint_answer(ironic: IronicService, path: str, body: object | None) -> int:
    """The status ironic answers a ramdisk request with (a GET when there is no body)."""
    request = urllib.request.Request(
        ironic.url + path,
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json", "X-OpenStack-Ironic-API-Version": "latest"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
