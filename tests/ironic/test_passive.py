"""Passive mode under a real ironic: the conductor polls the agent, the agent never calls.

ironic 39 with Tacet's plugin (``tacet-pxe`` boot, ``tacet-passive`` deploy) and
``[api] enable_ramdisk_endpoints = False``: lookup, heartbeat and continue_inspection
answer 403, so every step here is driven by the plugin's periodic poll. The agent boots
with the PXE config ironic wrote (no ``ipa-api-url``), starts in passive mode and only
answers; its sole outbound connection is the image download the deploy asks for.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Images, report
from .launcher import IronicError, IronicService, locate_ironic
from .machine import Machine
from .passive import PASSIVE_OVERRIDES, PassiveMachine


@pytest.fixture(scope="module")
def ironic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IronicService]:
    """An ironic of its own: the ramdisk endpoints off, the plugin's interfaces on."""
    try:
        install = locate_ironic()
    except IronicError as exc:
        pytest.fail(str(exc), pytrace=False)
    service = IronicService(
        install, tmp_path_factory.mktemp("ironic-passive"), overrides=PASSIVE_OVERRIDES
    )
    try:
        service.start()
    except IronicError as exc:
        service.stop()
        pytest.fail(f"{exc}\n{service.tail()}", pytrace=False)
    yield service
    service.stop()


@pytest.fixture
def machine(
    ironic: IronicService, images: Images, host_macs: list[str], tmp_path: Path
) -> Iterator[Machine]:
    found = PassiveMachine(
        ironic, tmp_path, host_macs, images.url("deploy.kernel"), images.url("deploy.initramfs")
    )
    yield found
    found.close()


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


def test_the_ramdisk_endpoints_are_off(ironic: IronicService, machine: PassiveMachine) -> None:
    uuid = machine.enroll()
    heartbeat = {"callback_url": "https://127.0.0.1:9", "agent_version": "1"}
    assert ramdisk_endpoint_answer(ironic, f"/v1/heartbeat/{uuid}", heartbeat) == 403
    inventory = {"interfaces": [{"mac_address": mac} for mac in machine.macs]}
    assert (
        ramdisk_endpoint_answer(ironic, "/v1/continue_inspection", {"inventory": inventory}) == 403
    )
    assert ramdisk_endpoint_answer(ironic, f"/v1/lookup?addresses={machine.macs[0]}", None) == 403


def test_passive_deploy_to_active(machine: PassiveMachine, images: Images) -> None:
    machine.enroll(boot_mode="bios", instance_info=images.instance_info(images.raw))
    machine.provide()
    requests_before = len(images.server.requests)
    node, seconds = machine.deploy()
    assert node["provision_state"] == "active", node.get("last_error")
    assert node["last_error"] is None
    written = machine.disk.read(0, len(images.raw_bytes))
    assert hashlib.sha256(written).hexdigest() == images.raw.sha256
    assert ("GET", f"/{images.raw.name}") in images.server.requests[requests_before:]

    (agent,) = machine.agents
    log = agent.log_text()
    assert " mode=passive " in log
    assert "ipa-api-url" not in agent.cmdline()
    assert "lookup" not in log.lower()
    # The token came with ironic's boot configuration; the agent bound its certificate
    # to it, and ironic verified the agent's TLS answers against that certificate.
    assert "ipa-agent-token=" in agent.cmdline()
    kept = Path(machine.ironic.workdir, "certificates", f"{node['uuid']}.crt")
    assert (
        kept.read_text().strip() == (agent.workdir / "state" / "agent-cert.pem").read_text().strip()
    )
    report("passive BIOS deploy of the raw image, deploy to active", f"{seconds:.1f} s")
