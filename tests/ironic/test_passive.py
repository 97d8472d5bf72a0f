"""Passive mode under a real ironic: the conductor polls the agent, the agent never calls.

ironic 39 with Tacet's plugin (``tacet-pxe`` boot, ``tacet-passive`` deploy) and
``[api] enable_ramdisk_endpoints = False``: lookup, heartbeat and continue_inspection
answer 403, so every step here is driven by the plugin's periodic poll. The agent boots
with the PXE config ironic wrote (no ``ipa-api-url``), starts in passive mode and only
answers; its sole outbound connection is the image download the deploy asks for.

How "the agent never connects to ironic" is proven: every agent boot runs under an
outbound audit (``strace -f`` of ``connect``/``sendto``/``sendmsg``, ``outbound.py``),
and the tests assert that the boots for inspection and cleaning reached no IP address
at all and the deploy's boot only the test's image server, never ironic's API port.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from conductor.client import AgentClient, Options, Trust
from tests.e2e.harness import BackgroundApp

from .conftest import Images, report, running_ironic
from .launcher import IronicService
from .machine import Machine
from .node import LocalAgent, inventory_in_one_disk_view
from .passive import PASSIVE_OVERRIDES, PassiveAgent, PassiveMachine, ramdisk_endpoint_answer


@pytest.fixture(scope="module")
def ironic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IronicService]:
    """An ironic of its own: the ramdisk endpoints off, the plugin's interfaces on."""
    with running_ironic(tmp_path_factory.mktemp("ironic-passive"), PASSIVE_OVERRIDES) as service:
        yield service


@pytest.fixture
def machine(
    ironic: IronicService, images: Images, host_macs: list[str], tmp_path: Path
) -> Iterator[Machine]:
    found = PassiveMachine(
        ironic, tmp_path, host_macs, images.url("deploy.kernel"), images.url("deploy.initramfs")
    )
    yield found
    found.close()


class StallingServer:
    """An image URL whose download starts, then never ends: a write_image stays running."""

    def __init__(self) -> None:
        self.downloading = threading.Event()
        self.app = web.Application()
        self.app.router.add_route("*", "/stall.raw", self.serve)
        self.url = ""

    async def serve(self, request: web.Request) -> web.StreamResponse:
        size = 64 * 1024 * 1024
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(size)})
        answer = web.StreamResponse(headers={"Content-Length": str(size)})
        await answer.prepare(request)
        await answer.write(bytes(1024 * 1024))
        self.downloading.set()
        while True:  # ends when the test's server stops
            await asyncio.sleep(1)


@pytest.fixture
def stalling_server() -> Iterator[StallingServer]:
    server = StallingServer()
    with BackgroundApp(server.app) as app:
        server.url = f"http://127.0.0.1:{app.port}/stall.raw"
        yield server


def stalled_deploy(
    machine: PassiveMachine, images: Images, stalling_server: StallingServer
) -> LocalAgent:
    """A deploy whose agent answers and starts writing an image that never arrives."""
    machine.enroll(
        boot_mode="bios",
        instance_info=images.instance_info(images.raw, image_source=stalling_server.url),
    )
    machine.provide()
    machine.api.set_provision_state(machine.ident, "active")
    machine.wait_for("wait call-back")
    agent = machine.boot_agent()
    stalling_server.downloading.wait(120)
    assert stalling_server.downloading.is_set(), agent.tail()
    return agent


async def agent_commands(address: str, token: str) -> list[str]:
    async with AgentClient(address, Options(Trust(), token)) as client:
        return [result.command_name for result in await client.list_commands()]


def destinations(agent: LocalAgent) -> set[str]:
    """host:port of everything the (stopped) agent connected or sent to over IP."""
    assert isinstance(agent, PassiveAgent)
    return {found.endpoint for found in agent.outbound()}


def test_the_ramdisk_endpoints_are_off(ironic: IronicService, machine: PassiveMachine) -> None:
    uuid = machine.enroll()
    heartbeat = {"callback_url": "https://127.0.0.1:9", "agent_version": "1"}
    assert ramdisk_endpoint_answer(ironic, f"/v1/heartbeat/{uuid}", heartbeat) == 403
    inventory = {"interfaces": [{"mac_address": mac} for mac in machine.macs]}
    assert (
        ramdisk_endpoint_answer(ironic, "/v1/continue_inspection", {"inventory": inventory}) == 403
    )
    assert ramdisk_endpoint_answer(ironic, f"/v1/lookup?addresses={machine.macs[0]}", None) == 403


def test_the_plugin_limits_glibcs_heaps_as_ironic_loads_it(ironic: IronicService) -> None:
    """``[tacet] malloc_arena_max`` (2 unless set): applied when ironic builds its deploy
    interfaces, before its periodic tasks' threads allocate (tests/test_heap.py shows
    what the limit does)."""
    assert "glibc heaps limited to 2 ([tacet] malloc_arena_max)" in ironic.log.read_text()


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
    # Its only connections: the image download, none to ironic (audited with strace).
    assert destinations(agent) == {urlsplit(images.base_url).netloc}
    report("passive BIOS deploy of the raw image, deploy to active", f"{seconds:.1f} s")


def test_inspect_clean_and_deploy_in_passive_mode(machine: PassiveMachine, images: Images) -> None:
    """manageable -> inspect -> manageable -> provide (metadata cleaning) -> available ->
    deploy -> active, every step driven by the conductor's polls."""
    machine.enroll(
        boot_mode="bios", instance_info=images.instance_info(images.raw), automated_clean=True
    )
    # The disk holds old data that metadata cleaning must wipe before the deploy.
    machine.disk.write(0, b"\x55\xaa" * 256)

    node, inspect_seconds = machine.inspect()
    assert node["provision_state"] == "manageable", node.get("last_error")
    stored = machine.api.get(f"/v1/nodes/{machine.ident}/inventory")["inventory"]
    expected = inventory_in_one_disk_view(machine.disk, machine.agents[-1].cmdline())
    assert [d["name"] for d in stored["disks"]] == [d["name"] for d in expected["disks"]]
    assert sorted(i["mac_address"] for i in stored["interfaces"]) == sorted(
        i["mac_address"] for i in expected["interfaces"]
    )

    node = machine.provide()
    assert node["provision_state"] == "available", node.get("last_error")
    assert machine.disk.read(0, 512) == bytes(512)  # the partition table area is wiped
    assert "erase_devices_metadata" in machine.agents[-1].log_text()

    node, deploy_seconds = machine.deploy()
    assert node["provision_state"] == "active", node.get("last_error")
    written = machine.disk.read(0, len(images.raw_bytes))
    assert hashlib.sha256(written).hexdigest() == images.raw.sha256
    for agent in machine.agents:
        assert " mode=passive " in agent.log_text()
    # The outbound audit: inspection and cleaning reached no IP address at all, the
    # deploy only the image server; none of them ironic (its API is at ironic.url).
    inspected, cleaned, deployed = machine.agents
    assert destinations(inspected) == set()
    assert destinations(cleaned) == set()
    assert destinations(deployed) == {urlsplit(images.base_url).netloc}
    assert urlsplit(machine.ironic.url).netloc not in destinations(deployed)
    report("passive inspection, inspect to manageable", f"{inspect_seconds:.1f} s")
    report("passive deploy after cleaning, deploy to active", f"{deploy_seconds:.1f} s")


def test_a_wrong_machine_is_refused_before_any_change(
    machine: PassiveMachine, images: Images
) -> None:
    """The node's only port has a MAC the agent does not have: the agent is told nothing."""
    machine.identity_macs = ["52:54:00:de:ad:01"]
    machine.enroll(boot_mode="bios", instance_info=images.instance_info(images.raw))
    machine.provide()
    machine.disk.write(0, b"\x55\xaa" * 256)

    machine.api.set_provision_state(machine.ident, "active")
    machine.wait_for("wait call-back")
    agent = machine.boot_agent()
    node = machine.api.wait_for_state(machine.ident, "deploy failed", 120, alive=agent.problem)

    error = node["last_error"] or ""
    assert "is not this node" in error and "52:54:00:de:ad:01 not present" in error, error
    # What the agent ran, asked with the token its boot carried: the inventory only.
    token = agent.cmdline().split("ipa-agent-token=")[1].split()[0]
    commands = asyncio.run(agent_commands(f"127.0.0.1:{machine.agent_port}", token))
    assert commands == ["get_hardware_info"]
    assert "writing image" not in agent.log_text()
    machine.shut_down_agent()
    assert machine.disk.read(0, 512) == b"\x55\xaa" * 256


def test_a_vanished_agent_fails_the_deploy_within_the_timeout(
    machine: PassiveMachine, images: Images, stalling_server: StallingServer
) -> None:
    """The agent answers, starts writing (its download stalls), then disappears."""
    agent = stalled_deploy(machine, images, stalling_server)
    agent.process.kill()  # type: ignore[union-attr]
    gone = time.monotonic()

    node = machine.api.wait_for_state(machine.ident, "deploy failed", 120)
    silent = time.monotonic() - gone
    error = node["last_error"] or ""
    assert "has not answered for" in error and "(limit 30 s)" in error, error
    # [api] ramdisk_heartbeat_timeout is 30 s from the last answer, which came up to one
    # poll (2 s, plus up to 0.5 s jitter) before the kill; polls come every 2 s.
    assert 30 - 2.5 <= silent <= 30 + 15, silent
    report("vanished agent to deploy failed", f"{silent:.1f} s")


@pytest.fixture(scope="module")
def impatient_ironic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IronicService]:
    """ironic's callback-timeout reaper every 2 s and a deploy callback timeout of 20 s:
    a passive node whose step runs longer stays alive only by the plugin's refreshes
    (every 10 s: half the shorter of that timeout and ramdisk_heartbeat_timeout's 30 s)."""
    overrides = {
        **PASSIVE_OVERRIDES,
        "conductor": {"deploy_callback_timeout": "20", "check_provision_state_interval": "2"},
    }
    with running_ironic(tmp_path_factory.mktemp("ironic-impatient"), overrides) as service:
        yield service


def test_a_long_step_outlives_the_callback_timeout_on_refreshes_alone(
    impatient_ironic: IronicService,
    images: Images,
    host_macs: list[str],
    tmp_path: Path,
    stalling_server: StallingServer,
) -> None:
    """An unchanged answer is not handed to ironic as a heartbeat, yet ironic's callback
    timeout never fires while the agent answers: the refreshes move provision_updated_at."""
    machine = PassiveMachine(
        impatient_ironic,
        tmp_path,
        host_macs,
        images.url("deploy.kernel"),
        images.url("deploy.initramfs"),
    )
    try:
        agent = stalled_deploy(machine, images, stalling_server)
        uuid = machine.ident
        time.sleep(5)  # the heartbeat that saw write_image start is behind us

        def said(text: str) -> int:
            lines = impatient_ironic.log_text().splitlines()
            return sum(1 for line in lines if text in line and uuid in line)

        heartbeats, refreshes = said("Heartbeat from node"), said("a refresh for node")
        touched = set()
        watched = 60.0  # three callback timeouts
        end = time.monotonic() + watched
        while time.monotonic() < end:
            node = machine.node()
            assert node["provision_state"] == "wait call-back", node.get("last_error")
            touched.add(node["provision_updated_at"])
            time.sleep(2)
        new_heartbeats = said("Heartbeat from node") - heartbeats
        new_refreshes = said("a refresh for node") - refreshes
        report(
            "60 s of a running write_image with deploy_callback_timeout 20 s",
            f"{new_refreshes} refreshes, {new_heartbeats} heartbeats, "
            f"{len(touched)} provision_updated_at values",
        )
        assert new_heartbeats == 0
        assert new_refreshes >= 4
        assert len(touched) >= 4
        # Gone, the agent stops the refreshes, and ironic's own timeout (or the plugin's
        # silence limit) ends the deploy.
        agent.process.kill()  # type: ignore[union-attr]
        node = machine.api.wait_for_state(machine.ident, "deploy failed", 90)
        assert node["last_error"], node
    finally:
        machine.close()
