"""Passive mode on several ironic conductors: ironic's hash ring decides who polls whom.

One site as production runs it (``cluster.py``): PostgreSQL, one ``ironic-api`` and
three ``ironic-conductor`` processes on JSON-RPC, Tacet's plugin in each, the ramdisk
endpoints off. Two conductors are in the default conductor group and one in ``rack-a``.
Twenty passive nodes (``fleet.py``) are deployed, six of them in ``rack-a``; their
deploys stall on purpose (the image never finishes), so every node stays in ``wait
call-back`` with a running ``write_image`` and is polled every 2 s. Who polled which
agent is read from the agents' access logs, where the plugin's User-Agent names its
conductor.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from conductor.client import AgentClient, Options, Trust
from tests.e2e.harness import BackgroundApp

from .cluster import ClusterProcess, IronicCluster
from .conftest import report
from .fleet import (
    AGENT_PORT,
    PassiveFleet,
    address,
    conductor_of,
    list_nodes,
    mac,
    stalling_app,
    wait_until,
)
from .launcher import IronicError, locate_ironic
from .passive import PASSIVE_OVERRIDES

NODES = 20
RACK_A = range(14, 20)  # the nodes in conductor group rack-a
GROUPS = ["", "", "rack-a"]
POLL_INTERVAL = 2
WINDOW = 5 * POLL_INTERVAL  # seconds of access log each check reads


@dataclass
class Site:
    cluster: IronicCluster
    fleet: PassiveFleet
    release: threading.Event  # lets the images finish
    killed_at: float = 0.0
    victim: ClusterProcess | None = None
    moved: list[str] = field(default_factory=list)  # the victim's agents
    released_at: float | None = None  # when the images were let finish

    def release_images(self) -> float:
        """Let every held image finish (once); when that was."""
        if self.released_at is None:
            self.released_at = time.time()
            self.release.set()
        return self.released_at

    def conductors_seen(
        self, since: float, method: str | None = None
    ) -> dict[str, collections.Counter[str]]:
        """agent address -> how many requests each conductor made to it since ``since``
        (only ``method`` ones if given)."""
        seen: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for entry in self.fleet.access_entries(since):
            conductor = conductor_of(entry["user_agent"] or "")
            if conductor is not None and method in (None, entry["method"]):
                seen[entry["local"]][conductor] += 1
        return seen

    def ironic_conductor_of(self) -> dict[str, str]:
        """agent address -> the conductor ironic's API says holds its node."""
        nodes = self.fleet.api.get("/v1/nodes/detail?limit=1000")
        return {node["driver_info"]["tacet_address"]: node["conductor"] for node in nodes["nodes"]}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("cluster")
    overrides = {section: dict(values) for section, values in PASSIVE_OVERRIDES.items()}
    overrides["tacet"]["poll_interval"] = str(POLL_INTERVAL)
    overrides["conductor"] = {"deploy_callback_timeout": "900"}
    overrides["api"]["ramdisk_heartbeat_timeout"] = "60"
    try:
        install = locate_ironic()
    except IronicError as exc:
        pytest.fail(str(exc), pytrace=False)
    cluster = IronicCluster(install, workdir / "site", GROUPS, overrides)
    fleet: PassiveFleet | None = None
    release = threading.Event()
    with BackgroundApp(stalling_app(release)) as images:
        try:
            started = time.monotonic()
            cluster.start()
            took = time.monotonic() - started
            report("cluster: PostgreSQL, the API and 3 conductors up", f"{took:.1f} s")
            fleet = PassiveFleet(
                cluster.url, f"http://127.0.0.1:{images.port}", workdir, NODES, access_log=True
            )
            started = time.monotonic()
            fleet.enroll_and_deploy(lambda i: {"conductor_group": "rack-a"} if i in RACK_A else {})
            took = time.monotonic() - started
            report(f"cluster: {NODES} nodes enrolled, waiting for their agents", f"{took:.1f} s")
            fleet.start_agents([c.workdir / "tftp" for c in cluster.conductors])
            wait_until(lambda: fleet.contacted() == NODES, 120, "first contact with every agent")
            yield Site(cluster, fleet, release)
        except (IronicError, TimeoutError) as exc:
            pytest.fail(f"{exc}\n{cluster.tail()}", pytrace=False)
        finally:
            if fleet is not None:
                fleet.stop()
            cluster.stop()


def test_each_node_is_polled_by_exactly_one_conductor_of_its_group(site: Site):
    since = time.time()
    time.sleep(WINDOW)
    seen = site.conductors_seen(since)
    holders = site.ironic_conductor_of()
    hosts = {c.host: c.group for c in site.cluster.conductors}
    for i in range(NODES):
        agent = f"{address(i)}:{AGENT_PORT}"
        polled_by = seen.get(agent, collections.Counter())
        assert len(polled_by) == 1, (agent, dict(polled_by))
        ((conductor, polls),) = polled_by.items()
        assert polls >= WINDOW // POLL_INTERVAL - 2, (agent, polls)
        assert conductor == holders[agent], (agent, conductor, holders[agent])
        assert hosts[conductor] == ("rack-a" if i in RACK_A else ""), (agent, conductor)
    per_conductor = collections.Counter(next(iter(seen[a])) for a in seen)
    report("cluster: agents polled per conductor", str(dict(per_conductor)))
    default_group = [host for host, group in hosts.items() if group == ""]
    assert all(per_conductor[host] > 0 for host in default_group), per_conductor


def test_nodes_stay_waiting_while_polled(site: Site):
    states = site.fleet.states()
    assert all(states[uuid] == "wait call-back" for uuid in site.fleet.uuids), states


def test_a_killed_conductors_nodes_are_taken_over_by_the_survivor(site: Site):
    """SIGKILL, as a conductor host losing power: once ironic sees it dead (10 s here),
    the other conductor of its group polls its nodes; none is left unpolled."""
    holders = site.ironic_conductor_of()
    default_group = [c for c in site.cluster.conductors if c.group == ""]
    victim = max(default_group, key=lambda c: sum(h == c.host for h in holders.values()))
    survivor = next(c for c in default_group if c is not victim)
    site.victim, site.moved = victim, sorted(a for a, h in holders.items() if h == victim.host)
    assert site.moved, holders
    site.killed_at = time.time()
    victim.kill()

    def taken_over() -> bool:
        seen = site.conductors_seen(site.killed_at + 1)
        return all(survivor.host in seen.get(agent, {}) for agent in site.moved)

    wait_until(taken_over, 90, "the survivor polling the killed conductor's nodes")
    took = time.time() - site.killed_at
    report(f"cluster: {len(site.moved)} nodes of a killed conductor polled again", f"{took:.1f} s")
    assert site.fleet.all_in("wait call-back"), site.fleet.states()


def test_a_restarted_conductor_resumes_without_repeating_a_command(site: Site):
    """The killed conductor comes back: its nodes return to it, and neither it nor the
    survivor sends an agent anything again (no second node_info, no second write_image):
    no agent got a command since the kill."""
    assert site.victim is not None
    restarted = time.time()
    site.victim.spawn()
    site.cluster.wait_alive([c.host for c in site.cluster.conductors])

    def back() -> bool:
        seen = site.conductors_seen(restarted)
        return all(site.victim.host in seen.get(agent, {}) for agent in site.moved)

    wait_until(back, 90, "the restarted conductor polling its nodes again")
    report("cluster: a restarted conductor polling its nodes", f"{time.time() - restarted:.1f} s")
    time.sleep(WINDOW)
    holders = site.ironic_conductor_of()
    assert all(holders[agent] == site.victim.host for agent in site.moved), holders
    commands = site.conductors_seen(site.killed_at, method="POST")
    assert not commands, dict(commands)
    assert site.fleet.all_in("wait call-back"), site.fleet.states()


def test_a_conductor_stopped_mid_sweep_takes_no_lock_after_and_leaves_none(site: Site):
    """SIGTERM while a sweep waits for its polls: the sweep ends there and acts on none
    of its answers (each would take a node's lock), so the conductor does not wait the
    polls out, and no node stays locked by it. Started again, it drives its nodes on.

    The conductor stopped is rack-a's, which alone holds rack-a's nodes. One more rack-a
    node's agent address accepts connections and never answers, so each of its sweeps
    waits ``poll_timeout`` (5 s) for that poll. The six rack-a agents' answers change
    while it is frozen (SIGSTOP): their images finish. Once thawed, as soon as its next
    sweep has polled all six, SIGTERM. Acting on those answers after the stop began
    would be six heartbeats, each under its node's lock, and is what the test looks for
    in its log."""
    victim = next(c for c in site.cluster.conductors if c.group == "rack-a")
    rack_a = [f"{address(i)}:{AGENT_PORT}" for i in RACK_A]
    silent_uuid = deploy_silent_node(site)
    with silent_agent(address(NODES), AGENT_PORT):
        victim.signal(signal.SIGSTOP)
        try:
            site.release_images()
            written = asyncio.run(wait_images_written(site, list(RACK_A)))
            report(f"cluster: {len(RACK_A)} rack-a images written, their conductor frozen", written)
        finally:
            thawed = time.time()
            victim.signal(signal.SIGCONT)

        def polled_all() -> bool:
            seen = site.conductors_seen(thawed)
            return all(victim.host in seen.get(agent, {}) for agent in rack_a)

        # Quick steps: SIGTERM must fall within the sweep's 5 s wait for the silent node.
        wait_until(polled_all, 60, f"{victim.host} polling every rack-a agent", step=0.2)
        assert victim.process is not None
        stopping = time.monotonic()
        victim.signal(signal.SIGTERM)
        try:
            victim.process.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the stopping conductor still ran after 30 s\n{victim.tail()}")
        took = time.monotonic() - stopping
    report("cluster: a conductor stopped mid-sweep (SIGTERM) exited", f"{took:.1f} s")
    try:
        check_stopped_cleanly(site, victim)
    finally:
        victim.spawn()
        site.cluster.wait_alive([c.host for c in site.cluster.conductors])
    states = site.fleet.states()
    assert states[silent_uuid] == "wait call-back", states[silent_uuid]


def check_stopped_cleanly(site: Site, victim: ClusterProcess) -> None:
    """No heartbeat (under a node's lock) after ironic logged the stop, the sweep cut
    short, and no node left reserved by the stopped conductor."""
    log = victim.log.read_text(errors="replace")
    _, stopped, after = log.partition("Successfully stopped conductor")
    assert stopped, "ironic did not log the conductor's stop"
    assert "Passive poll: a heartbeat for node" not in after, after[:4000]
    # The stop fell within a sweep (this conductor never stopped before).
    assert "sweep abandoned" in log or "left unheard" in log, after[:4000]
    reserved = {
        node["uuid"]: node["reservation"]
        for node in list_nodes(site.fleet.api, "reservation")
        if node["reservation"] == victim.host
    }
    assert not reserved, reserved


def deploy_silent_node(site: Site) -> str:
    """One more rack-a node, deployed up to ``wait call-back``, whose agent never comes."""
    api = site.fleet.api
    body = site.fleet.node_body(NODES)
    body["conductor_group"] = "rack-a"
    uuid = str(api.post("/v1/nodes", body)["uuid"])
    api.post("/v1/ports", {"node_uuid": uuid, "address": mac(NODES)})
    for step, state in (("manage", "manageable"), ("provide", "available")):
        api.set_provision_state(uuid, step)
        wait_until(lambda s=state: site.fleet.states()[uuid] == s, 60, f"the silent node {state}")
    api.set_provision_state(uuid, "active")
    wait_until(lambda: site.fleet.states()[uuid] == "wait call-back", 60, "the silent node waiting")
    return uuid


@contextlib.contextmanager
def silent_agent(host: str, port: int) -> Iterator[None]:
    """A listener that lets connections in (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        yield


async def wait_images_written(site: Site, indexes: list[int], timeout: float = 120) -> str:
    """Until each agent's ``write_image`` deploy step (its ``execute_deploy_step``
    command, the only one its frozen conductor started) has finished: asked with the
    node's token, as a conductor would, not through ironic."""
    tokens = json.loads((site.fleet.workdir / "tokens.json").read_text())
    started = time.monotonic()
    pending = set(indexes)
    while pending:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"write_image still running on agents {sorted(pending)}")
        for i in sorted(pending):
            options = Options(trust=Trust(), token=tokens[str(i)], user_agent="test")
            async with AgentClient(f"{address(i)}:{AGENT_PORT}", options) as client:
                commands = await client.list_commands()
            writes = [c for c in commands if c.command_name == "execute_deploy_step"]
            if writes and not writes[-1].running:
                assert writes[-1].status == "SUCCEEDED", writes[-1]
                pending.discard(i)
        await asyncio.sleep(0.2)
    return f"{time.monotonic() - started:.1f} s"


def test_the_deploys_finish_each_driven_by_one_conductor(site: Site):
    """The images finish: every deploy goes on to ``active``, each agent getting its
    remaining commands from one conductor, the one holding its node."""
    released = site.release_images()
    wait_until(lambda: site.fleet.all_in("active"), 240, "every deploy active")
    took = time.time() - released
    report("cluster: 20 deploys active after their images finished", f"{took:.1f} s")
    holders = site.ironic_conductor_of()
    commands = site.conductors_seen(released, method="POST")
    for i in range(NODES):
        agent = f"{address(i)}:{AGENT_PORT}"
        assert list(commands.get(agent, {})) == [holders[agent]], (agent, commands.get(agent))
