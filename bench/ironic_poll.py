"""One ironic conductor polling N passive agents through Tacet's plugin: its CPU and memory.

A real ironic (the all-in-one process of tests/ironic/launcher.py, from
``tools/setup-ironic``, with the plugin, ``[api] enable_ramdisk_endpoints = False`` and
``[tacet] poll_interval``) and N real Tacet agents on loopback addresses, several
hundred to a process as in bench/fleet.py. Each node is enrolled on
``tacet-manual-management`` with ``tacet-pxe``/``tacet-passive`` and its agent's
address, and deployed; every agent starts with the token ironic put in its PXE config
(token-binding trust) and its own MAC. The image server answers and then stalls every
download, so after first contact every node stays in ``wait call-back`` with a running
``write_image``, the steady state of a long step: each sweep is then, per node, one
command-list poll by the plugin, and for the refreshes that fall due (about one per node
every half ``ramdisk_heartbeat_timeout``, set to ironic's default, 300 s) one update of
the node's ``provision_updated_at``; a heartbeat into ironic (its lock, database
writes, ironic's own command-status request) only when an answer changed.

Figures: ironic's RSS idle (started, no node), with N nodes deployed up to ``wait
call-back`` and no agent up yet (ironic's own share), and with N nodes polled (growth
over idle, and over the deployed nodes: the polling's share); the CPU seconds of
ironic's processes per sweep (over --sweeps sweeps), as a share of one core; the
heartbeats ironic processed per sweep (its debug log's "Heartbeat from node" lines) and
the plugin's refreshes ("a refresh for node").
Goal: 1,000 nodes polled every 10 s cost less than 25 % of one core and < 100 MiB over
an idle ironic. Run it alone on the machine:

    .venv/bin/python bench/ironic_poll.py [--sizes 100,1000] [--interval 10] [--sweeps 6]

TACET_BENCH_PROFILE=FILE samples ironic with py-spy (installed into ironic's virtualenv
by hand) over the measured sweeps, into FILE.<nodes>. Ctrl-C, SIGTERM or an error ends
ironic and the agent workers (each in a process group of its own) before the bench exits.
TACET_BENCH_TRACEMALLOC=DIR traces ironic's Python allocations (tracemalloc, through
bench/ironic_heap/) from the nodes deployed on, and prints per ironic process the source
lines holding most of what first contact and polling allocated and kept (the snapshot in
DIR/<nodes>); that run's first contact, RSS and CPU include tracemalloc's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import fleet  # noqa: E402

from tests.ironic.fleet import address, mac, serve, stalling_app  # noqa: E402

MIB = 1024 * 1024
# The held image downloads send a KiB this often, so they never reach the agent's read
# timeout: at 5,000 nodes the first contacts outlast it and its retries.
TRICKLE = 20.0


# -- ironic's side ----------------------------------------------------------------------------
def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants (ironic's all-in-one command forks workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rpartition(")")[2].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def rss_of(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1])
        except OSError:
            continue
    return total * os.sysconf("SC_PAGE_SIZE") / MIB


def threads_of(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("Threads:"):
                    total += int(line.split()[1])
    return total


def malloc_report(pids: list[int], console: Path) -> float:
    """glibc's per-arena figures (into ironic's console log), then ``malloc_trim(0)`` in
    each process through gdb; the RSS after. What the trim gives back was freed memory
    that glibc kept, not objects ironic or the plugin hold."""
    before = console.stat().st_size
    for pid in pids:
        subprocess.run(
            [
                "gdb",
                "-p",
                str(pid),
                "-batch",
                "-ex",
                "call (void) malloc_stats()",
                "-ex",
                "call (int) malloc_trim(0)",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            timeout=120,
        )
    with console.open("rb") as handle:
        handle.seek(before)
        report = handle.read().decode(errors="replace")
    # glibc's "Arena N:" blocks (system bytes: held from the kernel; in use), one
    # "Total (incl. mmap):" block per process, which is not added again here
    arenas = held = used = 0
    in_arena = False
    for line in report.splitlines():
        if line.startswith("Arena "):
            arenas, in_arena = arenas + 1, True
        elif line.startswith("Total"):
            in_arena = False
        elif in_arena and line.startswith("system bytes"):
            held += int(line.split("=")[1])
        elif in_arena and line.startswith("in use bytes"):
            used += int(line.split("=")[1])
    print(
        f"bench: {len(pids)} ironic processes, glibc heaps {arenas}, held {held / MIB:.1f} MiB, "
        f"in use {used / MIB:.1f} MiB (before the trim)",
        flush=True,
    )
    return rss_of(pids)


# -- cleanup ----------------------------------------------------------------------------------
class ProcessGroups:
    """Every process group the bench started, ended however the bench ends.

    ironic and the agent workers each run in a session (and process group) of their own,
    so a terminal's Ctrl-C does not reach them half-way through; ``end_all`` runs from
    ``finally`` blocks and from atexit, and ends each whole group (ironic forks workers,
    which may outlive their parent), with SIGKILL for a group still there after a grace.
    """

    def __init__(self) -> None:
        self.groups: list[int] = []

    def add(self, process: subprocess.Popen[Any]) -> None:
        self.groups.append(process.pid)  # start_new_session: the pid is the group id

    @staticmethod
    def _alive(group: int) -> bool:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def end(self, group: int, grace: float = 20.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self._alive(group) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(-group, os.WNOHANG)  # reap ours, or the group never empties
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-group, 0)

    def end_all(self) -> None:
        while self.groups:
            self.end(self.groups.pop())


GROUPS = ProcessGroups()


def exit_on_signal(signum: int, _frame: Any) -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, through every ``finally``."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def uninterrupted() -> Any:
    """Cleanup that a second Ctrl-C or SIGTERM does not cut short."""
    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {signum: signal.signal(signum, signal.SIG_IGN) for signum in caught}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def start_profiler(
    pid: int, seconds: int, bin_dir: Path, label: str
) -> subprocess.Popen[bytes] | None:
    """With TACET_BENCH_PROFILE=FILE, py-spy samples ironic over the measured sweeps into
    FILE.<nodes> (collapsed stacks), without pausing it (``--nonblocking``). py-spy is not a
    dependency: ``pip install py-spy`` into ironic's virtualenv first."""
    out = os.environ.get("TACET_BENCH_PROFILE")
    if not out:
        return None
    out = f"{out}.{label}"
    spy = shutil.which("py-spy", path=f"{bin_dir}:{os.environ.get('PATH', '')}")
    if spy is None:
        raise SystemExit("bench: TACET_BENCH_PROFILE is set but py-spy is not installed")
    command = [spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking"]
    command += ["--duration", str(seconds), "--format", "raw", "--output", out]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
    GROUPS.add(process)
    return process


HEAP_SITE = ROOT / "bench" / "ironic_heap"


def heap_environment(n: int) -> dict[str, str]:
    """With TACET_BENCH_TRACEMALLOC=DIR: ironic's interpreter can trace its allocations
    (bench/ironic_heap/sitecustomize.py) and dumps snapshots into DIR/<n> when asked. Its
    RSS and CPU then include tracemalloc's own cost: a diagnostic run, not a measurement."""
    base = os.environ.get("TACET_BENCH_TRACEMALLOC")
    if not base:
        return {}
    directory = Path(base) / str(n)
    directory.mkdir(parents=True, exist_ok=True)
    return {"TACET_BENCH_TRACEMALLOC": str(directory), "PYTHONPATH": str(HEAP_SITE)}


def heap_snapshot(directory: str | None, stage: str, pids: list[int]) -> None:
    """Ask ironic's processes for a tracemalloc snapshot of ``stage``; wait for them."""
    if not directory:
        return
    (Path(directory) / f"{stage}.request").touch()
    wanted = [Path(directory) / f"{stage}.{pid}.snapshot" for pid in pids]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not all(path.exists() for path in wanted):
        time.sleep(1)
    missing = [path.name for path in wanted if not path.exists()]
    if missing:
        print(f"bench: no heap snapshot {', '.join(missing)}", file=sys.stderr)


def heap_start(directory: str | None) -> None:
    """Start tracemalloc in ironic's processes (with the nodes deployed, no agent up)."""
    if directory:
        (Path(directory) / "start.request").touch()
        time.sleep(3)  # the watchers look every second


def heap_report(directory: str | None, stage: str, top: int = 25) -> None:
    """Per ironic process, the source lines holding most of the Python memory allocated
    since tracing started and still alive at ``stage``."""
    import tracemalloc

    if not directory:
        return
    for path in sorted(Path(directory).glob(f"{stage}.*.snapshot")):
        pid = path.name.split(".")[1]
        snapshot = tracemalloc.Snapshot.load(str(path))
        lines = snapshot.statistics("lineno")
        total = sum(s.size for s in lines)
        print(f"heap, process {pid}: allocated since deployed and alive: {total / MIB:.1f} MiB")
        for stat in lines[:top]:
            frame = stat.traceback[0]
            print(f"  {stat.size / MIB:8.2f} MiB {stat.count:9d} blocks  {frame}")
        for stat in snapshot.statistics("traceback")[:5]:
            print(f"  {stat.size / MIB:8.2f} MiB from:")
            for line in stat.traceback.format(most_recent_first=True):
                print(f"      {line}")


def wait_until(check: Any, timeout: float, what: str) -> None:
    print(f"bench: waiting for {what}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(2)
    raise SystemExit(f"bench: {what} did not happen within {timeout:.0f} s")


def run_size(
    n: int,
    interval: int,
    sweeps: int,
    workers: int,
    workdir: Path,
    settle: float,
    ironic_env: dict[str, str],
) -> dict[str, Any]:
    from tests.e2e.harness import BackgroundApp
    from tests.ironic.launcher import IronicApi, IronicService, locate_ironic
    from tests.ironic.passive import PASSIVE_OVERRIDES

    overrides = {key: dict(value) for key, value in PASSIVE_OVERRIDES.items()}
    overrides["tacet"] = {"poll_interval": str(interval), "poll_timeout": "10"}
    overrides["conductor"] = {
        "deploy_callback_timeout": "3600",
        "workers_pool_size": "400",
        "max_concurrent_deploy": str(max(250, n)),  # ironic 503s the 251st deploy in flight
    }
    overrides["api"]["ramdisk_heartbeat_timeout"] = "300"  # ironic's default, not the tests' 30
    ironic = IronicService(locate_ironic(), workdir / f"ironic-{n}", overrides=overrides)
    agents: list[subprocess.Popen[str]] = []
    heap_dir = ironic_env.get("TACET_BENCH_TRACEMALLOC")
    with BackgroundApp(stalling_app(trickle=TRICKLE)) as images:
        try:
            ironic.write_config()
            ironic.create_schema()
            # No Ctrl-C between the start and the group's record.
            with uninterrupted(), ironic.console.open("wb") as console:
                ironic.process = subprocess.Popen(
                    [str(ironic.install.bin / "ironic"), "--config-file", str(ironic.conf)],
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    env={**ironic.env(), **ironic_env},
                    start_new_session=True,
                )
                GROUPS.add(ironic.process)
            ironic.wait_ready()
            time.sleep(5)
            idle_rss = rss_of(tree_pids(ironic.process.pid))
            idle_threads = threads_of(tree_pids(ironic.process.pid))
            api = IronicApi(ironic.url)
            base = f"http://127.0.0.1:{images.port}"
            uuids = []
            for i in range(n):
                node = api.post(
                    "/v1/nodes",
                    {
                        "driver": "tacet-manual-management",
                        "boot_interface": "tacet-pxe",
                        "deploy_interface": "tacet-passive",
                        "power_interface": "fake",
                        "management_interface": "noop",
                        "network_interface": "noop",
                        "automated_clean": False,
                        "driver_info": {
                            "deploy_kernel": f"{base}/deploy.kernel",
                            "deploy_ramdisk": f"{base}/deploy.initramfs",
                            "tacet_address": f"{address(i)}:9999",
                        },
                        "instance_info": {
                            "image_source": f"{base}/image-{i}.raw",
                            "image_os_hash_algo": "sha256",
                            "image_os_hash_value": "0" * 64,
                            "image_disk_format": "raw",
                        },
                        "properties": {"cpu_arch": "x86_64", "capabilities": "boot_mode:bios"},
                    },
                )
                api.post("/v1/ports", {"node_uuid": node["uuid"], "address": mac(i)})
                uuids.append(node["uuid"])
            for uuid in uuids:
                api.set_provision_state(uuid, "manage")

            def all_in(state: str) -> bool:
                listed = api.get("/v1/nodes?fields=uuid,provision_state&limit=1000")["nodes"]
                return sum(1 for x in listed if x["provision_state"] == state) == n

            wait_until(lambda: all_in("manageable"), 600, f"{n} nodes manageable")
            for uuid in uuids:
                api.set_provision_state(uuid, "provide")
            wait_until(lambda: all_in("available"), 600, f"{n} nodes available")
            for uuid in uuids:
                api.set_provision_state(uuid, "active")

            def all_waiting() -> bool:
                # ironic's image cache can lose a race between many deploys preparing at
                # once (the node fails "No such file or directory" under tftp-master):
                # such a node is deployed again, and the count printed.
                listed = api.get("/v1/nodes?fields=uuid,provision_state&limit=1000")["nodes"]
                for x in listed:
                    if x["provision_state"] == "deploy failed":
                        redeployed.append(x["uuid"])
                        api.set_provision_state(x["uuid"], "active")
                return sum(1 for x in listed if x["provision_state"] == "wait call-back") == n

            redeployed: list[str] = []
            wait_until(all_waiting, 1200, f"{n} nodes in wait call-back")
            if redeployed:
                print(f"bench: {len(redeployed)} deploys failed and were started again")
            enrolled_rss = rss_of(tree_pids(ironic.process.pid))  # no agent up yet
            enrolled_threads = threads_of(tree_pids(ironic.process.pid))
            heap_start(heap_dir)

            tokens = {}
            for i in range(n):
                config = (
                    ironic.workdir / "tftp" / "pxelinux.cfg" / ("01-" + mac(i).replace(":", "-"))
                )
                tokens[str(i)] = config.read_text().split("ipa-agent-token=")[1].split()[0]
            (workdir / "tokens.json").write_text(json.dumps(tokens))
            per = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
            firsts = [sum(per[:i]) for i in range(len(per))]
            me = [sys.executable, str(Path(__file__).resolve())]
            for first, count in zip(firsts, per, strict=True):
                if count:
                    with uninterrupted():
                        agents.append(
                            subprocess.Popen(
                                [*me, "--serve", f"{first},{count}", "--workdir", str(workdir)],
                                stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE,
                                text=True,
                                start_new_session=True,
                            )
                        )
                        GROUPS.add(agents[-1])
            for process in agents:
                assert process.stdout is not None
                process.stdout.readline()

            def all_contacted() -> bool:
                listed = api.get("/v1/nodes?fields=uuid,driver_internal_info&limit=1000")["nodes"]
                return sum(1 for x in listed if x["driver_internal_info"].get("agent_url")) == n

            began = time.monotonic()
            wait_until(all_contacted, 1200, f"first contact with {n} agents")
            first_contact_s = time.monotonic() - began
            time.sleep(settle)  # the write_image commands started, the first refreshes spread
            pids = tree_pids(ironic.process.pid)
            profiler = start_profiler(
                ironic.process.pid, interval * sweeps, ironic.install.bin, str(n)
            )
            log_before = ironic.log.stat().st_size
            cpu_before = fleet.process_cpu_seconds(pids)
            time.sleep(interval * sweeps)
            cpu = fleet.process_cpu_seconds(pids) - cpu_before
            with ironic.log.open("rb") as log:
                log.seek(log_before)
                text = log.read()
                heartbeats = text.count(b"Heartbeat from node")
                refreshes = text.count(b"a refresh for node")
            if profiler is not None:
                profiler.wait(timeout=60)
            polled_rss = rss_of(pids)
            polled_threads = threads_of(pids)
            heap_snapshot(heap_dir, "polled", pids)
            trimmed_rss = (
                malloc_report(pids, ironic.console)
                if os.environ.get("TACET_BENCH_MALLOC")
                else None
            )
            still = api.get("/v1/nodes?fields=uuid,provision_state&limit=1000")["nodes"]
            waiting = sum(1 for x in still if x["provision_state"] == "wait call-back")
            return {
                "idle_rss_mib": idle_rss,
                "enrolled_rss_mib": enrolled_rss,
                "polled_rss_mib": polled_rss,
                "trimmed_rss_mib": trimmed_rss,
                "threads": [idle_threads, enrolled_threads, polled_threads],
                "cpu_per_sweep_s": cpu / sweeps,
                "core_share": cpu / (interval * sweeps),
                "first_contact_s": first_contact_s,
                "heartbeats_per_sweep": heartbeats / sweeps,
                "refreshes_per_sweep": refreshes / sweeps,
                "waiting": waiting,
            }
        finally:
            with uninterrupted():
                for process in agents:  # stdin's end asks a worker to stop its agents
                    if process.stdin is not None:
                        with contextlib.suppress(OSError):
                            process.stdin.close()
                for process in agents:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=60)
                GROUPS.end_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--interval", type=int, default=10, help="[tacet] poll_interval")
    parser.add_argument("--sweeps", type=int, default=6, help="sweeps measured")
    parser.add_argument(
        "--settle",
        type=float,
        help="seconds from the last first contact to the measured sweeps (default two "
        "sweeps; a refresh period, 150 s, for the steady state of many nodes whose first "
        "contacts took minutes)",
    )
    parser.add_argument("--workers", type=int, default=2, help="agent processes")
    parser.add_argument(
        "--malloc-arena-max",
        type=int,
        help="run ironic with MALLOC_ARENA_MAX set (glibc's heaps for its threads)",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    fleet.raise_open_files()
    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGHUP, exit_on_signal)
    if args.serve is not None:
        first, count = (int(v) for v in args.serve.split(","))
        asyncio.run(serve(first, count, args.workdir, access_log=False))
        return
    atexit.register(GROUPS.end_all)  # a backstop for any way out the finally misses
    workdir = Path(tempfile.mkdtemp(prefix="tacet-ironic-poll-"))
    try:
        sizes = [int(v) for v in args.sizes.split(",")]
        print(f"poll interval {args.interval} s; CPU over {args.sweeps} sweeps after first contact")
        print(
            f"{'nodes':>6} {'first contact s':>15} {'cpu s/sweep':>11} {'core %':>7} "
            f"{'idle RSS MiB':>12} {'enrolled RSS MiB':>16} {'polled RSS MiB':>14} "
            f"{'growth MiB':>10} {'over enrolled MiB':>17} {'waiting':>7} "
            f"{'heartbeats/sweep':>16} {'refreshes/sweep':>15}"
        )
        for n in sizes:
            settle = args.settle if args.settle is not None else 2 * args.interval
            ironic_env = heap_environment(n)
            if args.malloc_arena_max is not None:
                ironic_env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
            r = run_size(n, args.interval, args.sweeps, args.workers, workdir, settle, ironic_env)
            print(
                f"{n:>6} {r['first_contact_s']:>15.1f} {r['cpu_per_sweep_s']:>11.2f} "
                f"{100 * r['core_share']:>6.1f}% {r['idle_rss_mib']:>12.1f} "
                f"{r['enrolled_rss_mib']:>16.1f} "
                f"{r['polled_rss_mib']:>14.1f} {r['polled_rss_mib'] - r['idle_rss_mib']:>10.1f} "
                f"{r['polled_rss_mib'] - r['enrolled_rss_mib']:>17.1f} "
                f"{r['waiting']:>7} {r['heartbeats_per_sweep']:>16.1f} "
                f"{r['refreshes_per_sweep']:>15.1f}",
                flush=True,
            )
            print(f"       threads idle/enrolled/polled: {r['threads']}", flush=True)
            if r["trimmed_rss_mib"] is not None:
                print(f"       RSS after malloc_trim: {r['trimmed_rss_mib']:.1f} MiB", flush=True)
            heap = ironic_env.get("TACET_BENCH_TRACEMALLOC")
            heap_report(heap, "polled")
    finally:
        with uninterrupted():
            GROUPS.end_all()
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
