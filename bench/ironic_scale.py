"""Passive polling spread over 1, 2 or 3 ironic conductors: each one's CPU and memory, and
whether every agent is polled within the interval.

The site of tests/ironic/test_cluster.py, at scale: PostgreSQL (Debian's package, a
throw-away cluster), one ``ironic-api`` and C ``ironic-conductor`` processes on JSON-RPC
with Tacet's plugin, and N real Tacet agents on loopback addresses, several hundred to a
process (tests/ironic/fleet.py), their deploys held mid-download so that every node
stays in ``wait call-back`` and is polled every ``--interval`` seconds. Each size is
deployed once, with the first of ``--conductors`` counts; for each count in turn
conductors then join (started) or leave (SIGTERM) the running site, the bench waits
until every agent has been polled by exactly one running conductor for two intervals,
no agent was sent a command in them and no conductor handed ironic a heartbeat (the hash
ring has moved the nodes, and ironic has finished acting on first contacts and on the
first polls of the nodes a conductor took over: "moved s"), one more interval, and
measures ``--rounds`` intervals:

- per conductor: CPU seconds per interval as a share of one core, RSS, and how many
  agents it polled (from the agents' access logs, where the plugin names its conductor);
- the round: the longest gap between two polls of one agent, and how many agents had a
  gap longer than 1.5 intervals or no poll (a round that did not finish in time);
- the heartbeats the conductors handed ironic in those intervals (their debug log's
  "Heartbeat from node" lines): 0 in steady polling of nodes waiting on long steps.

A conductor that stays from one count to the next keeps its memory's history: its RSS
at a lower count is after it held a smaller share.

    .venv/bin/python bench/ironic_scale.py [--sizes 1000,5000] [--conductors 3,2,1]
        [--interval 10] [--rounds 6] [--workers 4] [--kept-alive N]

Run it alone on the machine; the agents share its cores with the conductors, and their
CPU is not counted.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import fleet as agent_fleet  # noqa: E402
from ironic_poll import TRICKLE, rss_of, tree_pids  # noqa: E402

from tests.e2e.harness import BackgroundApp  # noqa: E402
from tests.ironic.cluster import IronicCluster  # noqa: E402
from tests.ironic.fleet import (  # noqa: E402
    PassiveFleet,
    conductor_of,
    raise_open_files,
    stalling_app,
    wait_until,
)
from tests.ironic.launcher import locate_ironic  # noqa: E402
from tests.ironic.passive import PASSIVE_OVERRIDES  # noqa: E402


def overrides(interval: int, n: int, kept_alive: int | None = None) -> dict[str, dict[str, str]]:
    found = {section: dict(values) for section, values in PASSIVE_OVERRIDES.items()}
    found["tacet"] = {"poll_interval": str(interval), "poll_timeout": "10"}
    if kept_alive is not None:
        found["tacet"]["kept_alive_agents"] = str(kept_alive)
    found["conductor"] = {
        "deploy_callback_timeout": "7200",
        "workers_pool_size": "400",
        # ironic answers 503 to the deploy past this many in flight, site-wide
        "max_concurrent_deploy": str(max(250, n)),
    }
    found["api"]["ramdisk_heartbeat_timeout"] = "900"
    return found


def gaps(entries: list[dict[str, Any]]) -> dict[str, float]:
    """agent -> the longest time between two of its polls (a conductor's GETs)."""
    times: dict[str, list[float]] = collections.defaultdict(list)
    for entry in entries:
        if entry["method"] == "GET" and conductor_of(entry["user_agent"] or ""):
            times[entry["local"]].append(entry["time"])
    return {
        agent: max((b - a for a, b in zip(sorted(t), sorted(t)[1:], strict=False)), default=0.0)
        for agent, t in times.items()
    }


class AccessLogs:
    """The agents' access logs, read as they grow (each line once)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.offsets: dict[Path, int] = {}
        self.entries: list[dict[str, Any]] = []

    def since(self, when: float) -> list[dict[str, Any]]:
        for path in sorted(self.workdir.glob("access-*.jsonl")):
            with path.open("rb") as handle:
                handle.seek(self.offsets.get(path, 0))
                data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            self.entries += [json.loads(line) for line in complete.splitlines()]
        self.entries = [e for e in self.entries if e["time"] >= when - 600]  # bounded
        return [e for e in self.entries if e["time"] >= when]


HEARTBEAT = b"Heartbeat from node"


class Heartbeats:
    """The heartbeats each conductor handed ironic, counted in its console log as it grows."""

    def __init__(self) -> None:
        self.offsets: dict[Path, int] = {}

    def new(self, cluster: IronicCluster) -> dict[str, int]:
        """Running conductor -> heartbeats logged since the last call."""
        found = {}
        for conductor in cluster.running():
            path = conductor.console
            with path.open("rb") as handle:
                handle.seek(self.offsets.get(path, 0))
                data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            found[conductor.host] = complete.count(HEARTBEAT)
        return found


def pollers(entries: list[dict[str, Any]]) -> dict[str, set[str]]:
    """agent -> the conductors that polled it in ``entries``."""
    found: dict[str, set[str]] = collections.defaultdict(set)
    for entry in entries:
        conductor = conductor_of(entry["user_agent"] or "")
        if conductor is not None:
            found[entry["local"]].add(conductor)
    return found


SETTLE_LIMIT = 1800  # seconds


def settle(
    cluster: IronicCluster, logs: AccessLogs, heartbeats: Heartbeats, n: int, interval: int
) -> float:
    """Until, over the last two intervals, every agent was polled by exactly one conductor,
    a running one (after conductors joined or left, the hash ring has moved the nodes),
    no agent was sent a command and no conductor handed ironic a heartbeat: ironic has
    finished acting on the first contacts (each starts the deploy's steps: several
    commands per agent) and on the first polls of the nodes a conductor took over (each
    a heartbeat), so what is measured is steady polling, not the tail of either."""
    running = {c.host for c in cluster.running()}
    began = time.monotonic()
    deadline = began + SETTLE_LIMIT
    heartbeats.new(cluster)
    recent: list[int] = []
    handed = 0
    while time.monotonic() < deadline:
        time.sleep(interval)
        recent = [sum(heartbeats.new(cluster).values()), *recent[:1]]
        handed += recent[0]
        entries = logs.since(time.time() - 2 * interval)
        seen = pollers(entries)
        quiet = not any(e["method"] == "POST" for e in entries) and recent == [0, 0]
        if quiet and len(seen) == n and all(len(c) == 1 and c <= running for c in seen.values()):
            took = time.monotonic() - began
            print(
                f"bench: {len(running)} conductors settled in {took:.0f} s, "
                f"{handed} heartbeats handed to ironic meanwhile",
                file=sys.stderr,
            )
            return took
    raise RuntimeError(
        f"the conductors did not settle on one conductor per agent, no command sent and "
        f"no heartbeat, in {SETTLE_LIMIT} s"
    )


def run(
    n: int,
    counts: list[int],
    interval: int,
    rounds: int,
    workers: int,
    workdir: Path,
    kept_alive: int | None = None,
) -> None:
    """One site of ``n`` nodes, deployed with ``counts[0]`` conductors; then measured with
    each count in turn, conductors joining or leaving the running site in between."""
    site = workdir / f"site-{n}"
    cluster = IronicCluster(
        locate_ironic(), site, [""] * counts[0], overrides(interval, n, kept_alive)
    )
    with BackgroundApp(stalling_app(trickle=TRICKLE)) as images:
        fleet: PassiveFleet | None = None
        try:
            began = time.monotonic()
            cluster.start()
            fleet = PassiveFleet(
                cluster.url, f"http://127.0.0.1:{images.port}", site, n, workers, access_log=True
            )
            fleet.poll_timeout = 3600
            fleet.redeploy_failed = True
            fleet.enroll_and_deploy()
            deployed = time.monotonic() - began
            if fleet.redeployed:
                print(
                    f"bench: {len(fleet.redeployed)} deploys failed and were started again",
                    file=sys.stderr,
                )
            fleet.start_agents([c.workdir / "tftp" for c in cluster.conductors])
            wait_until(lambda: fleet.contacted() == n, 3600, "first contact with every agent")
            contact = time.monotonic() - began - deployed
            logs, heartbeats = AccessLogs(site), Heartbeats()
            for count in counts:
                while len(cluster.running()) < count:
                    cluster.add_conductor()
                while len(cluster.running()) > count:
                    cluster.remove_conductor()
                moved = settle(cluster, logs, heartbeats, n, interval)
                time.sleep(interval)
                measure(cluster, logs, heartbeats, n, interval, rounds, (deployed, contact, moved))
        finally:
            if fleet is not None:
                fleet.stop()
            cluster.stop()


def measure(
    cluster: IronicCluster,
    logs: AccessLogs,
    heartbeats: Heartbeats,
    n: int,
    interval: int,
    rounds: int,
    times: tuple[float, float, float],
) -> None:
    deployed, contact, moved = times
    running = cluster.running()
    pids = {c.host: tree_pids(c.process.pid) for c in running if c.process}
    cpu = {host: agent_fleet.process_cpu_seconds(p) for host, p in pids.items()}
    since = time.time()
    heartbeats.new(cluster)
    time.sleep(rounds * interval)
    handed = heartbeats.new(cluster)
    cpu = {h: agent_fleet.process_cpu_seconds(p) - cpu[h] for h, p in pids.items()}
    rss = {host: rss_of(p) for host, p in pids.items()}
    entries = logs.since(since)
    polled: collections.Counter[str] = collections.Counter()
    for conductors in pollers(entries).values():
        polled.update(conductors)
    longest = gaps(entries)
    late = sum(1 for gap in longest.values() if gap > 1.5 * interval)
    unpolled = n - len(longest)
    for host in sorted(cpu):
        print(
            f"{n:>6} {len(running):>10} {host:>17} {polled[host]:>7}"
            f" {100 * cpu[host] / (rounds * interval):>6.1f}% {rss[host]:>8.0f}"
            f" {max(longest.values(), default=0):>8.1f} {late + unpolled:>5} {handed[host]:>5}"
            f" {deployed:>9.0f} {contact:>8.0f} {moved:>8.0f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument(
        "--conductors",
        default="3,2,1",
        help="conductor counts measured in turn on one deployed site per size (the first "
        "deploys and finds the agents; then conductors join or leave)",
    )
    parser.add_argument("--interval", type=int, default=10, help="[tacet] poll_interval")
    parser.add_argument("--rounds", type=int, default=6, help="intervals measured")
    parser.add_argument("--workers", type=int, default=4, help="agent processes")
    parser.add_argument(
        "--kept-alive",
        type=int,
        metavar="N",
        help="[tacet] kept_alive_agents for every conductor (default: the plugin's, 1000);"
        " a conductor's agents beyond it reconnect for each poll",
    )
    args = parser.parse_args()
    raise_open_files()
    # SIGTERM (and a closed terminal) end the bench like Ctrl-C: through the ``finally``
    # blocks that stop the agents, the conductors and PostgreSQL.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    signal.signal(signal.SIGHUP, lambda signum, _frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="tacet-ironic-scale-"))
    print(f"poll interval {args.interval} s; CPU over {args.rounds} intervals after first contact")
    print(
        f"{'nodes':>6} {'conductors':>10} {'conductor':>17} {'agents':>7} {'core':>7}"
        f" {'RSS MiB':>8} {'max gap':>8} {'late':>5} {'hb':>5} {'deploy s':>9} {'found s':>8}"
        f" {'moved s':>8}"
    )
    try:
        counts = [int(v) for v in args.conductors.split(",")]
        for n in (int(v) for v in args.sizes.split(",")):
            run(n, counts, args.interval, args.rounds, args.workers, workdir, args.kept_alive)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
