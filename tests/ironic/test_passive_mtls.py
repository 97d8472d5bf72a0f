"""Passive mode in ``mtls`` trust: agents that demand a client certificate, driven by ironic.

The agents are set up as an image built with the ``tacet-ca`` element would be: a
client CA (``client-ca-file``), so every TLS handshake without a certificate from that
CA is refused. ironic runs the plugin with ``[tacet] trust_mode = mtls`` and the
conductor's certificate from ``tacet pki client``: the plugin's polls and ironic's own
agent commands (its ``AgentClient``, through the plugin's ``ConductorAgentClient``)
present it. Nothing secret is on the boot path: no ``ipa-agent-token``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conductor import pki
from tests.ports import free_port

from .conftest import Images, report, running_ironic
from .launcher import NO_PROXY, IronicService, locate_ironic
from .node import REPO, LoopDisk
from .passive import PASSIVE_OVERRIDES, PassiveAgent, PassiveMachine

REFUSED_WITHOUT_CERTIFICATE = "refused handshake from 127.0.0.1: no client certificate"


@dataclass(frozen=True)
class ConductorPki:
    client_ca: Path  # what the agents' image carries
    client_cert: Path  # what the conductor presents
    client_key: Path


@pytest.fixture(scope="module")
def conductor_pki(tmp_path_factory: pytest.TempPathFactory) -> ConductorPki:
    base = tmp_path_factory.mktemp("mtls-pki")
    ca = pki.init_ca(base)
    client = pki.issue_client(base, "ironic-conductor")
    return ConductorPki(ca.cert_path, client.cert_path, client.key_path)


def mtls_overrides(conductor_pki: ConductorPki) -> dict[str, dict[str, str]]:
    return {
        **PASSIVE_OVERRIDES,
        "tacet": {
            **PASSIVE_OVERRIDES["tacet"],
            "trust_mode": "mtls",
            "client_cert_file": str(conductor_pki.client_cert),
            "client_key_file": str(conductor_pki.client_key),
        },
        # ironic collects ramdisk logs with a client of its own making, which cannot
        # present the certificate (docs/ironic-passive.md, Limits).
        "agent": {"deploy_logs_collect": "never"},
    }


@pytest.fixture(scope="module")
def ironic(
    tmp_path_factory: pytest.TempPathFactory, conductor_pki: ConductorPki
) -> Iterator[IronicService]:
    workdir = tmp_path_factory.mktemp("ironic-mtls")
    with running_ironic(workdir, mtls_overrides(conductor_pki)) as service:
        yield service


@pytest.fixture
def machine(
    ironic: IronicService,
    images: Images,
    host_macs: list[str],
    tmp_path: Path,
    conductor_pki: ConductorPki,
) -> Iterator[PassiveMachine]:
    found = PassiveMachine(
        ironic, tmp_path, host_macs, images.url("deploy.kernel"), images.url("deploy.initramfs")
    )
    found.agent_settings = {"client-ca-file": str(conductor_pki.client_ca)}
    yield found
    found.close()


def test_mtls_inspect_clean_and_deploy(machine: PassiveMachine, images: Images) -> None:
    """inspect -> manageable -> provide (metadata cleaning) -> available -> deploy ->
    active, every command ironic and the plugin sent over mutual TLS."""
    machine.enroll(
        boot_mode="bios", instance_info=images.instance_info(images.raw), automated_clean=True
    )
    machine.disk.write(0, b"\x55\xaa" * 256)

    node, inspect_seconds = machine.inspect()
    assert node["provision_state"] == "manageable", node.get("last_error")
    stored = machine.api.get(f"/v1/nodes/{machine.ident}/inventory")["inventory"]
    assert stored["interfaces"], stored

    node = machine.provide()
    assert node["provision_state"] == "available", node.get("last_error")
    assert machine.disk.read(0, 512) == bytes(512)

    node, deploy_seconds = machine.deploy()
    assert node["provision_state"] == "active", node.get("last_error")
    written = machine.disk.read(0, len(images.raw_bytes))
    assert hashlib.sha256(written).hexdigest() == images.raw.sha256

    _inspected, cleaned, deployed = machine.agents
    assert "erase_devices_metadata" in cleaned.log_text()
    for agent in (cleaned, deployed):  # the token came inside mutual TLS (set_node_info)
        assert "agent token set from node_info" in agent.log_text()
    for agent in machine.agents:
        log = agent.log_text()
        assert " mode=passive " in log
        assert "ipa-agent-token" not in agent.cmdline()  # no secret on the boot path
        # Every handshake, the plugin's and ironic's, came with the certificate.
        assert REFUSED_WITHOUT_CERTIFICATE not in log
    assert isinstance(deployed, PassiveAgent)
    assert {o.endpoint for o in deployed.outbound()} == {urlsplit(images.base_url).netloc}
    report("mtls inspection, inspect to manageable", f"{inspect_seconds:.1f} s")
    report("mtls deploy after cleaning, deploy to active", f"{deploy_seconds:.1f} s")


def test_ironics_own_agent_client_is_refused_and_the_plugins_is_answered(
    conductor_pki: ConductorPki, tmp_path: Path
) -> None:
    """Without the plugin's client, ironic's commands fail in the agent's handshake."""
    install = locate_ironic()
    disk = LoopDisk(tmp_path)
    agent = PassiveAgent(
        tmp_path / "boot",
        "BOOTIF=01-52-54-00-12-34-56",
        disk,
        free_port(),
        {"client-ca-file": str(conductor_pki.client_ca)},
    )
    try:
        agent.start()
        agent.wait_for_log("listening on", 60)
        done = subprocess.run(
            [
                str(install.bin / "python"),
                "-m",
                "tests.ironic.ironic_agent_client",
                f"https://127.0.0.1:{agent.port}",
                str(agent.workdir / "state" / "agent-cert.pem"),
                str(conductor_pki.client_cert),
                str(conductor_pki.client_key),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, **NO_PROXY},
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        results = json.loads(done.stdout.splitlines()[-1])
        assert "AgentConnectionFailed" in results["ironic"].get("error", ""), results
        assert results["certified"] == {"commands": []}, results
        assert results["get_client"] == "ConductorAgentClient"
        agent.stop()
        # The refusal was the agent's, in the handshake, for the missing certificate.
        assert REFUSED_WITHOUT_CERTIFICATE in agent.log_text()
    finally:
        agent.stop()
        disk.close()
