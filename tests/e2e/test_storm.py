"""A connection storm from many addresses against the agent in the guest.

The guest gets a second NIC on a TAP device inside a network namespace the test creates
(``tests/e2e/netns.py``); dnsmasq in the namespace gives that NIC its address. The
storm runs in the namespace: 1,000 idle TCP connections and 100 slow TLS handshakes (a
ClientHello a byte a second: what a client without a certificate can do against mutual
TLS), spread over 100 source addresses on the TAP device, each reconnecting as soon as
the agent closes it. 11 connections per address is far under the per-peer cap (64), so
what holds the storm back is the agent's total cap (512) and its eviction of unsettled
connections, under the ramdisk's real limits. Meanwhile the conductor polls
``/v1/status`` at 1 Hz over the first NIC (QEMU's user network, forwarded from
127.0.0.1) as Tacet's conductor does, on one kept-alive mutual-TLS connection, and a
second poller opens a new connection for each poll (measured, not bounded).

1,000 rather than 3,000 idle connections: under emulation the agent gets through a few
hundred connections a second, and with 2,000 or 3,000 reconnecting clients its event
loop fell behind by more than the 1 s the conductor's polls are allowed (figures in
docs/agent.md). On a real CPU the 3,000-connection storm is ``tests/agent/test_storm.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import sys
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from conductor import pki
from tests.agent.storm import ROOT

from .harness import AGENT_PORT, VM, AgentClient, Ramdisk, report
from .netns import Namespace, require_namespace_tools
from .polling import StormConductor, summary
from .test_ramdisk import (
    VIRTIO,
    AgentFacts,
    agent_baseline,
    agent_facts,
    boot_for_conductor,
    report_memory,
)

pytestmark = pytest.mark.e2e

STORM_NET = ipaddress.IPv4Network("10.250.0.0/24")
DHCP_SERVER = "10.250.0.1"
GUEST_STORM_IP = "10.250.0.2"
STORM_MAC = "52:54:00:7a:e2:02"
STORM_SOURCES = [f"10.250.0.{host}" for host in range(100, 200)]
TAP = "tap0"
IDLE, HELLO = 1000, 100
LEAD = 5.0  # seconds of storm before the first poll: the agent is full by then
POLLS = 20
SETTLE = 30.0  # seconds after the storm before the agent's RSS is taken again
MAX_STORMS = 4  # storms run at most, until one fills the agent to its cap
MIB = 1024 * 1024
# What a storm may leave behind 30 s later: the heap's high-water mark, the pages the
# allocator cannot give back, at most 64 KiB for each of the 512 connections the cap
# allows (5.8-24.5 MiB was left in runs here, after one storm or two). The agent stays
# under it after a second storm too: each storm makes ~9,000 connections, so a leak of
# 1 KiB a connection would put it over.
LEFT_BEHIND_KIB = 32 * 1024
T = TypeVar("T")


@dataclass
class Stormed:
    vm: VM
    client: AgentClient
    namespace: Namespace


@pytest.fixture(scope="module")
def stormed(
    ramdisk: Ramdisk,
    pki_dir: Path,
    bundle: pki.NodeBundle,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stormed]:
    try:
        require_namespace_tools()
    except AssertionError as exc:
        pytest.fail(str(exc), pytrace=False)
    workdir = tmp_path_factory.mktemp("storm")
    with Namespace(f"tacet-storm-{os.getpid()}") as namespace:
        namespace.add_tap(TAP, STORM_NET, [DHCP_SERVER, *STORM_SOURCES])
        tap = namespace.open_tap(TAP)
        try:
            namespace.serve_dhcp(TAP, (STORM_MAC, GUEST_STORM_IP), DHCP_SERVER, workdir)
            vm = VM(
                workdir,
                ramdisk,
                VIRTIO,
                secrets=bundle.initrd(),
                extra_args=[
                    "-netdev",
                    f"tap,id=n1,fd={tap}",
                    # No option ROM: iPXE boots from the first NIC only.
                    "-device",
                    f"virtio-net-pci,netdev=n1,mac={STORM_MAC},romfile=",
                ],
                pass_fds=(tap,),
            )
            booted = boot_for_conductor(vm, pki_dir)
            try:
                seconds = namespace.wait_for_listener(GUEST_STORM_IP, AGENT_PORT, 120)
                report("storm NIC: agent reachable after its first answer", f"{seconds:.1f} s")
                yield Stormed(vm, booted.client, namespace)
            finally:
                vm.stop()
        finally:
            os.close(tap)


def storm_command(namespace: Namespace, seconds: float) -> list[str]:
    """The storm's clients, in the namespace, for ``seconds``: JSON counts on stdout."""
    return namespace.command(
        sys.executable,
        "-m",
        "tests.agent.storm",
        str(AGENT_PORT),
        str(IDLE),
        "0",
        "0",
        str(seconds),
        "--host",
        GUEST_STORM_IP,
        "--sources",
        ",".join(STORM_SOURCES),
        "--hello",
        str(HELLO),
    )


async def storm(
    namespace: Namespace, seconds: float, during: Awaitable[T]
) -> tuple[dict[str, int], T]:
    """Run the storm for ``seconds`` while ``during`` runs; the storm's counts, its result."""
    process = await asyncio.create_subprocess_exec(
        *storm_command(namespace, seconds), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        result = await during
        output, _ = await asyncio.wait_for(process.communicate(), seconds + 60)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    return json.loads(output), result


@dataclass
class StormRound:
    """One storm with the conductor polling through it, as the agent and the storm saw it."""

    counts: dict[str, int]  # the storm's view
    kept: list[float]  # kept-alive polls, seconds each
    fresh: list[float]  # new-connection polls, seconds each
    made: list[float]  # connections the kept-alive poller had to make
    open_seen: list[int]  # the agent's open connections, as each poll found
    cap: int
    refused: int
    evicted: int
    after: AgentFacts  # SETTLE seconds after the storm

    @property
    def filled(self) -> bool:
        """The storm brought the agent to (nearly) its total cap."""
        return max(self.open_seen, default=0) >= self.cap * 0.9


async def storm_round(stormed: Stormed, label: str) -> StormRound:
    client = stormed.client
    _, status = await client.get_json("/v1/status")
    rejections_before = status.get("rejections", {})
    connections_before = status["connections"]
    # The conductor as Tacet's polls: one kept-alive connection (conductor/http.py's Pool),
    # already in use when the storm begins; every new connection it had to make counted.
    seconds = LEAD + POLLS + 1
    async with StormConductor(client) as conductor:
        assert await conductor.kept_alive() == 200

        async def poll() -> tuple[list[float], list[float]]:
            await asyncio.sleep(LEAD)
            return await conductor.both(POLLS)

        counts, (kept, fresh) = await storm(stormed.namespace, seconds, poll())
        assert await conductor.kept_alive() == 200
    status, made, open_seen = conductor.last, conductor.made, conductor.open_seen
    rejections = {
        layer: count - rejections_before.get(layer, 0)
        for layer, count in status.get("rejections", {}).items()
    }
    connections = {
        key: status["connections"][key] - connections_before[key] for key in ("refused", "evicted")
    }
    cap = status["connections"]["max"]
    report(f"{label}: storm's view", json.dumps(counts))
    report(f"{label}: agent rejections", json.dumps(rejections))
    report(
        f"{label}: agent connections",
        f"cap {cap}, open at the polls max {max(open_seen)}, refused {connections['refused']},"
        f" evicted {connections['evicted']}",
    )
    report(f"{label}: kept-alive conductor polls", summary(kept))
    report(f"{label}: kept-alive conductor connections made", str(len(made)))
    report(f"{label}: new-connection polls", summary(fresh))
    await asyncio.sleep(SETTLE)
    after = await agent_facts(client)
    return StormRound(
        counts,
        kept,
        fresh,
        made,
        open_seen,
        cap,
        connections["refused"],
        connections["evicted"],
        after,
    )


async def test_storm_from_many_addresses_in_the_guest(stormed: Stormed):
    """Storms, each with the conductor polling through it, at least two and until one has
    filled the agent to its total cap (at most ``MAX_STORMS``).

    Every storm: the kept-alive conductor is answered within 1 s and its connection is
    never closed to make room; the agent closes connections; 30 s later the agent is
    within ``LEFT_BEHIND_KIB`` of where it began (a second storm shows what the first
    left is the heap's high-water mark, not a leak). The storm that filled the agent: it
    refused some newcomers and evicted unsettled connections to make room. On some
    machines the first storm after boot gets under 2,000 connects through (where
    ~9,000 is usual), the agent never holds more than about 400, and that storm shows
    nothing of the cap; a storm that does not fill it is run again.
    """
    client = stormed.client
    before = await agent_baseline(client)
    report("many-address storm: clients", f"{IDLE} idle TCP + {HELLO} slow TLS handshakes")
    report("many-address storm: source addresses", str(len(STORM_SOURCES)))
    rounds: list[StormRound] = []
    while len(rounds) < 2 or (not any(r.filled for r in rounds) and len(rounds) < MAX_STORMS):
        label = "many-address storm" + (f", storm {len(rounds) + 1}" if rounds else "")
        rounds.append(await storm_round(stormed, label))
        report_memory(label, before, rounds[-1].after)
    last = rounds[-1].after
    report("many-address storm: storms run", str(len(rounds)))
    report("many-address storm: agent log lines", str(last.journal_lines - before.journal_lines))
    overflows = last.listen_overflows - before.listen_overflows
    report("many-address storm: connects dropped, accept queue full", str(overflows))
    for r in rounds:
        assert max(r.kept) < 1.0, r.kept
        assert len(r.made) == 1, r.made  # its connection was never closed to make room
        assert r.counts["connected"] > IDLE + HELLO, r.counts  # the agent closed connections
        assert r.after.rss_kib - before.rss_kib < LEFT_BEHIND_KIB, (before, r.after)
    # At its total cap: full, it refused some newcomers and made room for others. (No
    # address came near the per-peer cap: 11 connections each, under 64.)
    filled = [r for r in rounds if r.filled]
    assert filled, [(r.cap, max(r.open_seen), r.counts) for r in rounds]
    assert all(r.cap == 512 for r in rounds), [r.cap for r in rounds]
    assert any(r.refused > 0 and r.evicted > 0 for r in filled), [
        (r.refused, r.evicted) for r in filled
    ]
    assert last.journal_lines - before.journal_lines < 100 * len(rounds), (before, last)
