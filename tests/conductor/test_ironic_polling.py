"""The ironic plugin's parts that import no ironic: address sources, the identity check,
the loop thread and one sweep against real agents. Its ironic side runs in tests/ironic."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from conductor.client import AgentClient, CommandResult, Inventory, Options, Trust
from conductor.ironic.addresses import agent_address, dnsmasq_lease_address, neutron_fixed_ip
from conductor.ironic.bridge import Abandoned, LoopThread
from conductor.ironic.pacing import HeartbeatPacer, commands_seen, refresh_period
from conductor.ironic.polling import (
    ALIVE,
    FIRST_CONTACT,
    REFUSED,
    UNREACHABLE,
    Identity,
    Poller,
    PollSettings,
    Target,
    identity_problems,
)

from .conftest import TOKEN

LEASES = """\
1765000000 52:54:00:aa:bb:01 192.0.2.10 node-a 01:52:54:00:aa:bb:01
1765000900 52:54:00:AA:BB:02 192.0.2.11 node-a *
1765000500 52:54:00:aa:bb:03 192.0.2.12 other *
duid 00:01:00:01:2c:1f:aa:bb:52:54:00:00:00:01
1765000950 3301 2001:db8::5 node-a 00:01:00:01:2c:1f
"""


def test_the_newest_lease_of_the_nodes_macs_wins() -> None:
    assert dnsmasq_lease_address(LEASES, ["52:54:00:aa:bb:01", "52:54:00:aa:bb:02"]) == (
        "192.0.2.11"
    )
    assert dnsmasq_lease_address(LEASES, ["52:54:00:AA:BB:01"]) == "192.0.2.10"
    assert dnsmasq_lease_address(LEASES, ["52:54:00:ff:ff:ff"]) is None
    assert (
        dnsmasq_lease_address("garbage\nnot-a-number 52:54:00:aa:bb:01 x\n", ["52:54:00:aa:bb:01"])
        is None
    )


def test_addresses_take_the_default_port_and_keep_a_given_one() -> None:
    assert agent_address("192.0.2.5", 9999) == "192.0.2.5:9999"
    assert agent_address(" 192.0.2.5:10000 ", 9999) == "192.0.2.5:10000"
    assert agent_address("[2001:db8::5]:9998", 9999) == "[2001:db8::5]:9998"
    assert agent_address("2001:db8::5", 9999) == "[2001:db8::5]:9999"


def test_a_neutron_ports_first_fixed_ip() -> None:
    port = {"fixed_ips": [{"subnet_id": "s"}, {"ip_address": "192.0.2.9"}]}
    assert neutron_fixed_ip(port) == "192.0.2.9"
    assert neutron_fixed_ip({"fixed_ips": []}) is None


def test_identity_needs_every_port_mac_and_the_serial() -> None:
    inventory = Inventory(
        {
            "interfaces": [
                {"mac_address": "52:54:00:AA:BB:01"},
                {"mac_address": "52:54:00:aa:bb:02"},
            ],
            "system_vendor": {"serial_number": "S1"},
        }
    )
    assert identity_problems(Identity(frozenset({"52:54:00:aa:bb:01"}), "S1"), inventory) == []
    problems = identity_problems(Identity(frozenset({"52:54:00:de:ad:01"}), "S2"), inventory)
    has = "52:54:00:aa:bb:01, 52:54:00:aa:bb:02"
    assert problems == [
        f"MAC(s) 52:54:00:de:ad:01 not present (the agent has: {has})",
        "system serial is 'S1', expected 'S2'",
    ]


def test_the_loop_thread_serves_every_caller_on_one_loop() -> None:
    loop_thread = LoopThread("test-loop")
    try:
        seen = []

        async def which_loop() -> asyncio.AbstractEventLoop:
            return asyncio.get_running_loop()

        def caller() -> None:
            seen.append(loop_thread.run(which_loop(), timeout=5))

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(seen) == 4 and all(loop is loop_thread.loop for loop in seen)

        async def forever() -> None:
            await asyncio.sleep(3600)

        with pytest.raises(TimeoutError):
            loop_thread.run(forever(), timeout=0.2)
    finally:
        loop_thread.stop()
    assert not loop_thread.alive


def test_the_loop_thread_abandons_work_when_told_and_cancels_it() -> None:
    """A stopping conductor does not wait out a sweep: ``abandon`` ends the wait and
    cancels the coroutine on the loop."""
    loop_thread = LoopThread("test-loop")
    try:
        cancelled = threading.Event()
        asked = []

        async def forever() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        def abandon() -> bool:
            asked.append(time.monotonic())
            return len(asked) >= 3

        started = time.monotonic()
        with pytest.raises(Abandoned):
            loop_thread.run(forever(), timeout=60, abandon=abandon, check_every=0.05)
        assert time.monotonic() - started < 5
        assert len(asked) == 3
        assert cancelled.wait(5)

        async def answer() -> int:
            await asyncio.sleep(0.1)
            return 7

        # Work that finishes first is not abandoned, and a timeout still applies.
        assert loop_thread.run(answer(), timeout=5, abandon=lambda: False, check_every=0.01) == 7
        with pytest.raises(TimeoutError):
            loop_thread.run(forever(), timeout=0.2, abandon=lambda: False, check_every=0.05)
    finally:
        loop_thread.stop()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def with_nic(mac: str):
    """An inventory collector for a machine with one NIC."""

    def collect() -> dict:
        return {"interfaces": [{"name": "eth0", "mac_address": mac}], "disks": []}

    return collect


async def test_a_sweep_identifies_new_agents_refuses_strangers_and_sees_the_gone(
    start_node,
) -> None:
    good = await start_node("good", inventory=with_nic("52:54:00:aa:bb:01"))
    stranger = await start_node("stranger", inventory=with_nic("52:54:00:aa:bb:02"))
    poller = Poller(PollSettings(concurrency=2, jitter=0.0, timeout=5, connect_timeout=2))
    first = await poller.sweep([])
    assert first == []

    async with AgentClient(good.address, Options(Trust(), TOKEN)) as client:
        macs = (await client.get_hardware_info()).macs
    assert macs == {"52:54:00:aa:bb:01"}
    node_info = {"node": {"uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"}, "config": {}}
    answers = await poller.sweep(
        [
            Target("good", good.address, Trust(), TOKEN, Identity(macs), node_info),
            Target(
                "stranger",
                stranger.address,
                Trust(),
                TOKEN,
                Identity(frozenset({"52:54:00:de:ad:01"})),
                node_info,
            ),
            Target("gone", f"127.0.0.1:{closed_port()}", Trust(), TOKEN),
        ]
    )
    by_node = {answer.uuid: answer for answer in answers}
    assert by_node["good"].kind == FIRST_CONTACT
    assert by_node["good"].certificate and "BEGIN CERTIFICATE" in by_node["good"].certificate
    assert by_node["good"].inventory is not None
    assert by_node["stranger"].kind == REFUSED
    assert "52:54:00:de:ad:01 not present" in (by_node["stranger"].reason or "")
    assert by_node["gone"].kind == UNREACHABLE
    # The good agent took the lookup data; the stranger was told nothing.
    assert good.agent.node_info is not None
    assert stranger.agent.node_info is None

    again = await poller.sweep([Target("good", good.address, Trust(), TOKEN)])
    assert [a.kind for a in again] == [ALIVE]
    # A known agent answers with its command list, which says what changed.
    names = [name for _id, name, _status in again[0].commands or ()]
    assert names == [
        "get_hardware_info",
        "get_hardware_info",
        "set_node_info",
    ]  # the test's, the poll's
    still = await poller.sweep([Target("good", good.address, Trust(), TOKEN)])
    assert still[0].commands == again[0].commands
    async with AgentClient(good.address, Options(Trust(), TOKEN)) as client:
        await client.run("standby.get_partition_uuids")
    changed = await poller.sweep([Target("good", good.address, Trust(), TOKEN)])
    assert changed[0].commands is not None and changed[0].commands != again[0].commands
    assert changed[0].commands[:3] == again[0].commands


async def test_polls_reconnect_unless_kept_alive_and_the_pool_follows_the_fleet(
    start_node,
) -> None:
    one = await start_node("one", inventory=with_nic("52:54:00:aa:bb:01"))
    two = await start_node("two", inventory=with_nic("52:54:00:aa:bb:02"))
    targets = [
        Target("one", one.address, Trust(), TOKEN),
        Target("two", two.address, Trust(), TOKEN),
    ]
    settings = PollSettings(concurrency=2, jitter=0.0, timeout=5, connect_timeout=2)

    # Not kept alive, no connection outlives its poll: each sweep connects anew (resuming
    # the TLS session), and nothing stays open between sweeps.
    poller = Poller(PollSettings(**{**settings.__dict__, "kept_alive": 0}))
    for _ in range(3):
        assert [a.kind for a in await poller.sweep(targets)] == [ALIVE, ALIVE]
        assert not poller.pool.idle
    made = poller.pool.connections_made
    await poller.sweep(targets)
    assert poller.pool.connections_made - made >= 2

    # Kept alive (the default): later sweeps reuse the connections; a node no longer
    # polled loses its slot and its idle connection.
    kept = Poller(settings)
    await kept.sweep(targets)
    made = kept.pool.connections_made
    await kept.sweep(targets)
    assert kept.pool.connections_made == made
    assert len(kept.pool.idle) == 2
    kept.forget({"one"})
    assert len(kept.pool.idle) == 1 and kept.pool.kept_alive == {one.address}
    await kept.pool.close()
    await poller.pool.close()


async def test_mtls_first_contact_presents_the_client_certificate_or_is_refused(
    start_node, test_pki, tmp_path
) -> None:
    """An agent with a client CA answers only a conductor with a certificate from it; at
    first contact any other is refused (the node fails at once, it does not wait)."""
    mac = "52:54:00:aa:bb:01"
    node = await start_node(
        "mtls", inventory=with_nic(mac), agent_token=None, client_ca_file=test_pki.ca_pem
    )
    identity = Identity(frozenset({mac}))
    node_info = {"node": {"uuid": "n"}, "config": {"agent_token": TOKEN}}
    certified = Trust(
        trust_on_first_use=True, certfile=test_pki.client_cert, keyfile=test_pki.client_key
    )
    poller = Poller(PollSettings(concurrency=2, jitter=0.0, timeout=5, connect_timeout=2))

    (bare,) = await poller.sweep(
        [Target("n", node.address, Trust(trust_on_first_use=True), TOKEN, identity, node_info)]
    )
    assert bare.kind == REFUSED
    assert "the agent requires a client certificate" in (bare.reason or ""), bare.reason
    assert node.agent.node_info is None

    (first,) = await poller.sweep(
        [Target("n", node.address, certified, TOKEN, identity, node_info)]
    )
    assert first.kind == FIRST_CONTACT, first.reason
    assert node.agent.node_info is not None
    seen = tmp_path / "agent.pem"
    seen.write_text(first.certificate or "")
    recorded = Trust(cafile=seen, certfile=test_pki.client_cert, keyfile=test_pki.client_key)
    (later,) = await poller.sweep([Target("n", node.address, recorded, TOKEN)])
    assert later.kind == ALIVE, later.reason


def result(result_id: str, status: str, data: dict | None = None) -> CommandResult:
    return CommandResult(result_id, "prepare_image", status, None, data)


def test_the_command_list_is_reduced_to_what_a_heartbeat_depends_on() -> None:
    running = commands_seen([result("a", "RUNNING")])
    assert running == (("a", "prepare_image", "RUNNING"),)
    assert commands_seen([result("a", "RUNNING", {"progress": 1})]) == running
    assert commands_seen([result("a", "SUCCEEDED")]) != running
    assert commands_seen([result("a", "RUNNING"), result("b", "RUNNING")]) != running


def test_the_refresh_is_half_the_shortest_limit_but_never_below_one_poll() -> None:
    assert refresh_period(300, 1800, 10) == 150
    assert refresh_period(300, 200, 10) == 100
    assert refresh_period(300, 0, 10) == 150  # a callback timeout of 0 is off
    assert refresh_period(8, 1800, 10) == 10
    assert refresh_period(0, 0, 10) == float("inf")


def test_ironic_hears_each_change_at_once_and_otherwise_one_refresh_per_period() -> None:
    phases: list[tuple[float, float]] = []

    def first_phase(low: float, high: float) -> float:
        phases.append((low, high))
        return 30.0

    pacer = HeartbeatPacer(uniform=first_phase)
    quiet = ("wait call-back", (("a", "prepare_image", "RUNNING"),))
    assert pacer.due("n1", quiet, now=0.0)  # never heard
    pacer.heard("n1", quiet, now=0.0, period=150.0)
    assert phases == [(0.0, 150.0)]  # the first refresh at a random point of the period
    assert not pacer.due("n1", quiet, now=10.0)
    assert not pacer.due("n1", quiet, now=29.9)
    assert pacer.due("n1", quiet, now=30.0)
    pacer.heard("n1", quiet, now=30.0, period=150.0)
    assert phases == [(0.0, 150.0)]  # later refreshes a whole period apart
    assert not pacer.due("n1", quiet, now=179.9)
    assert pacer.due("n1", quiet, now=180.0)

    assert not pacer.changed("n1", quiet)  # due at 180 s only as a refresh
    done = ("wait call-back", (("a", "prepare_image", "SUCCEEDED"),))
    assert pacer.due("n1", done, now=40.0)  # the agent's side changed
    assert pacer.changed("n1", done)
    moved = ("deploying", quiet[1])
    assert pacer.due("n1", moved, now=40.0)  # the node's side changed
    assert pacer.due("n2", quiet, now=40.0)  # per node
    assert pacer.changed("n2", quiet)  # never heard is news

    pacer.forget("n1")
    assert pacer.due("n1", quiet, now=40.0)
    pacer.heard("n1", quiet, now=40.0, period=150.0)
    pacer.heard("n2", quiet, now=40.0, period=150.0)
    pacer.keep_only({"n2"})
    assert pacer.due("n1", quiet, now=41.0)
    assert not pacer.due("n2", quiet, now=41.0)
