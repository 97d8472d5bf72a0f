"""The fleet poller at scale: N real Tacet agents on loopback, one polling process.

Starts N agents (real ``AgentServer``s: TLS, token, the command API) spread over a few
worker processes, with a CA-issued certificate, the qemu-virtio fixture inventory and
a recording power backend. A separate poller process (only the conductor's client
library, so its CPU time and memory are the poller's own) then measures, for a status
sweep (``GET /v1/status``) and an inventory sweep (``poll.get_hardware_info``):

- the first sweep: a new TLS connection (full handshake) to every agent;
- later sweeps over the kept-alive connections (median of --repeat);
- the poller's CPU seconds per sweep and its RSS (and peak RSS) at the end, and the
  agent workers' CPU seconds per sweep (they share the cores with the poller).

The workers freeze their start-up heap (``gc.freeze``): 500 agents share a process here,
where a real agent has one to itself (``TACET_BENCH_AGENTS_DEFAULT_GC=1`` turns it off).
``TACET_BENCH_PROFILE=PATH`` writes cProfiles of the kept-alive sweeps: the poller's
(``PATH.status``, ``PATH.inventory``) and each worker's during the inventory sweeps
(``PATH.agents<first>``).

Targets, for 1,000 agents: first sweep < 5 s, later sweeps < 0.5 s; poller memory
< 250 MiB at 5,000 agents. Run it alone on the machine: other load skews the figures
(the poller already shares the cores with the agents):

    .venv/bin/python bench/fleet.py [--sizes 100,1000,5000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conductor.client import DEFAULT_KEPT_ALIVE  # noqa: E402

TOKEN = "bench-fleet-token-0123456789abcdef"
FIXTURE = ROOT / "tests" / "fixtures" / "qemu-virtio" / "expected.json"
MIB = 1024 * 1024


def raise_open_files() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- worker: many agents in one process ---------------------------------------------------
def address(i: int) -> str:
    """Agent i's own loopback address (all of 127/8 is loopback), like one host per node."""
    return f"127.1.{i // 250}.{i % 250 + 1}"


async def serve(first: int, count: int, workdir: Path) -> None:
    """Start agents first..first+count-1 on their addresses, port 9999; print the
    addresses as one JSON line; run until stdin closes."""
    from agent import daemon
    from agent.config import Config
    from agent.daemon import AgentServer
    from agent.power import RecordingPower

    daemon.WARMUP_DELAY = 0.0
    inventory = json.loads(FIXTURE.read_text())
    servers = []
    base = Path(tempfile.mkdtemp(prefix="agents-", dir=workdir))
    for i in range(first, first + count):
        config = Config(
            listen_host=address(i),
            listen_port=9999,
            state_dir=base / str(i),
            config_dir=base / "etc",
            agent_token=TOKEN,
            cert_file=workdir / "certs" / f"{i}.pem",
            key_file=workdir / "node-key.pem",
        )
        server = AgentServer(config, RecordingPower(), collect_inventory=lambda: inventory)
        await server.start()
        servers.append(server)
    await asyncio.gather(*(s.warmup for s in servers if s.warmup is not None))
    if not os.environ.get("TACET_BENCH_AGENTS_DEFAULT_GC"):
        # A real agent is one per process; here 500 share one, and every full collection
        # walks all 500 agents' start-up objects (~0.12 s a time, in the middle of a
        # sweep). Freezing them gives each collection a real agent's share of work.
        gc.collect()
        gc.freeze()
    loop = asyncio.get_running_loop()
    profile_path = os.environ.get("TACET_BENCH_PROFILE")
    if profile_path:  # the poller brackets its kept-alive inventory sweeps with these
        import cProfile

        profile = cProfile.Profile()
        loop.add_signal_handler(signal.SIGUSR1, profile.enable)

        def dump() -> None:
            profile.disable()
            profile.dump_stats(f"{profile_path}.agents{first}")

        loop.add_signal_handler(signal.SIGUSR2, dump)
    print(json.dumps([f"{s.config.listen_host}:{s.port}" for s in servers]), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    for server in servers:
        await server.stop("bench finished")


# -- poller: the conductor's client library only -------------------------------------------
def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of other processes (the agent workers), from /proc."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


async def poll(
    addresses: list[str],
    workers: list[int],
    workdir: Path,
    repeat: int,
    concurrency: int,
    kept_alive: int,
) -> dict[str, Any]:
    from conductor.client import AgentClient, Options, Pool, Trust, tune_gc_for_polling

    tuned = False
    if not os.environ.get("TACET_BENCH_DEFAULT_GC"):
        tuned = tune_gc_for_polling(len(addresses), kept_alive)  # as `tacet provision` does

    gate = asyncio.Semaphore(concurrency)
    trust = Trust(cafile=workdir / "ca.pem")
    gc_time = [0.0, 0.0]  # total, start of the current collection

    def on_gc(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            gc_time[1] = time.perf_counter()
        else:
            gc_time[0] += time.perf_counter() - gc_time[1]

    gc.callbacks.append(on_gc)
    profile_path = os.environ.get("TACET_BENCH_PROFILE")
    report: dict[str, Any] = {"rss_start_mib": rss_mib(), "gc_tuned": tuned}

    async def sweep(
        clients: list[AgentClient], kind: str, profile: Any = None
    ) -> tuple[float, float, int, float, float]:
        async def one(client: AgentClient) -> bool:
            async with gate:
                if kind == "status":
                    await client.status()
                else:
                    inventory = await client.get_hardware_info()
                    assert inventory.macs
                return True

        gc_began = gc_time[0]
        agents_cpu = process_cpu_seconds(workers)
        cpu, began = cpu_seconds(), time.perf_counter()
        if profile is not None:
            profile.enable()
        outcomes = await asyncio.gather(*(one(c) for c in clients), return_exceptions=True)
        if profile is not None:
            profile.disable()
        wall = time.perf_counter() - began
        failures = [o for o in outcomes if o is not True]
        if failures:
            print(f"  {len(failures)} failures, first: {failures[0]!r}", file=sys.stderr)
        cpu = cpu_seconds() - cpu
        agents_cpu = process_cpu_seconds(workers) - agents_cpu
        return wall, cpu, len(failures), gc_time[0] - gc_began, agents_cpu

    for kind in ("status", "inventory"):
        pool = Pool(max_kept_alive=kept_alive)  # fresh: the first sweep pays the handshakes
        options = Options(trust, TOKEN, retries=1)
        clients = [AgentClient(a, options, pool=pool) for a in addresses]
        first = await sweep(clients, kind)
        profile = None
        if profile_path:  # the kept-alive sweeps only, here and in the agent workers
            import cProfile

            profile = cProfile.Profile()
            if kind == "inventory":
                for pid in workers:
                    os.kill(pid, signal.SIGUSR1)
                await asyncio.sleep(0.2)
        later = [await sweep(clients, kind, profile) for _ in range(repeat)]
        context = pool.ca_context(trust.cafile, trust.certfile, trust.keyfile)
        if profile is not None:
            profile.dump_stats(f"{profile_path}.{kind}")
            if kind == "inventory":
                for pid in workers:
                    os.kill(pid, signal.SIGUSR2)
        report[kind] = {
            "first_s": first[0],
            "first_cpu_s": first[1],
            "later_s": statistics.median(s[0] for s in later),
            "later_cpu_s": statistics.median(s[1] for s in later),
            "later_gc_s": statistics.median(s[3] for s in later),
            "first_agents_cpu_s": first[4],
            "later_agents_cpu_s": statistics.median(s[4] for s in later),
            "later_all_s": [round(s[0], 3) for s in later],
            "failures": first[2] + sum(s[2] for s in later),
            "connections": len(pool.connections),
            "connections_made": pool.connections_made,
            "handshakes": getattr(context, "handshakes", 0),
            "resumed": getattr(context, "resumed", 0),
        }
        report["rss_end_mib"] = rss_mib()
        if os.environ.get("TACET_BENCH_TRACE"):
            import tracemalloc

            snapshot = tracemalloc.take_snapshot()
            for stat in snapshot.statistics("lineno")[:25]:
                print(stat, file=sys.stderr)
            print(
                f"traced {sum(s.size for s in snapshot.statistics('filename')) / MIB:.1f} MiB",
                file=sys.stderr,
            )
        await pool.close()
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


# -- orchestration ----------------------------------------------------------------------------
def make_pki(workdir: Path, count: int) -> None:
    """A CA, one key for every agent and a certificate per agent address (as a deployer's
    CA would issue them; one key only keeps the bench's set-up short)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from conductor import pki

    pki.init_ca(workdir / "ca")
    ca, ca_key, _pem = pki.load_ca(workdir / "ca")
    shutil.copy(workdir / "ca" / "ca.pem", workdir / "ca.pem")
    key = ec.generate_private_key(pki.CURVE())
    (workdir / "node-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (workdir / "certs").mkdir(exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    for i in range(count):
        path = workdir / "certs" / f"{i}.pem"
        if path.exists():
            continue
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"node-{i}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address(i)))]),
                critical=False,
            )
            .sign(ca_key, pki.signature_hash(ca_key))
        )
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def run_size(
    n: int, workers: int, workdir: Path, repeat: int, concurrency: int, kept_alive: int
) -> dict[str, Any]:
    me = [sys.executable, str(Path(__file__).resolve())]
    per = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
    began = time.perf_counter()
    firsts = [sum(per[:i]) for i in range(len(per))]
    processes = [
        subprocess.Popen(
            [*me, "--serve", f"{first},{count}", "--workdir", str(workdir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for first, count in zip(firsts, per, strict=True)
        if count
    ]
    try:
        ports: list[str] = []
        for process in processes:
            assert process.stdout is not None
            ports += json.loads(process.stdout.readline())
        started = time.perf_counter() - began
        time.sleep(1.0)  # let every agent finish its first inventory collection
        options = ["--workdir", str(workdir), "--repeat", str(repeat)]
        options += ["--concurrency", str(concurrency), "--kept-alive", str(kept_alive)]
        poller = subprocess.run(
            [*me, "--poll", *options],
            input=json.dumps({"addresses": ports, "workers": [p.pid for p in processes]}),
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        report: dict[str, Any] = json.loads(poller.stdout)
        report["agents_started_s"] = started
        return report
    finally:
        for process in processes:
            assert process.stdin is not None
            process.stdin.close()
        for process in processes:
            process.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--workers", type=int, default=2, help="agent processes")
    parser.add_argument("--repeat", type=int, default=5, help="kept-alive sweeps")
    parser.add_argument("--concurrency", type=int, default=256, help="requests in flight")
    parser.add_argument(
        "--kept-alive",
        type=int,
        default=DEFAULT_KEPT_ALIVE,
        help="agents with kept-alive connections; the rest resume TLS sessions (%(default)s)",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--poll", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    limit = raise_open_files()
    if args.serve is not None:
        first, count = (int(v) for v in args.serve.split(","))
        asyncio.run(serve(first, count, args.workdir))
        return
    if args.poll:
        given = json.loads(sys.stdin.read())
        work = poll(
            given["addresses"],
            given["workers"],
            args.workdir,
            args.repeat,
            args.concurrency,
            args.kept_alive,
        )
        print(json.dumps(asyncio.run(work)))
        return
    shm = Path("/dev/shm")
    workdir = Path(tempfile.mkdtemp(prefix="tacet-fleet-", dir=shm if shm.is_dir() else None))
    try:
        sizes = [int(v) for v in args.sizes.split(",")]
        make_pki(workdir, max(sizes))
        print(
            f"open-files limit {limit}; {args.workers} agent processes; concurrency "
            f"{args.concurrency}; kept-alive figures are the median of {args.repeat} sweeps"
        )
        header = (
            f"{'agents':>6} {'sweep':>9} {'first s':>8} {'cpu s':>6} {'agt cpu':>7} "
            f"{'later s':>8} {'cpu s':>6} {'agt cpu':>7} {'gc s':>5} {'fail':>4} "
            f"{'poller RSS MiB (peak)':>22} {'agents up s':>11}"
        )
        print("cpu s: the poller's CPU seconds per sweep; agt cpu: the agent workers' together")
        print(header)
        for n in sizes:
            report = run_size(
                n, args.workers, workdir, args.repeat, args.concurrency, args.kept_alive
            )
            print(
                f"  poller RSS before connecting {report['rss_start_mib']:.1f} MiB; gc threshold "
                f"{'raised' if report['gc_tuned'] else 'default'}; TLS "
                + "; ".join(
                    f"{k}: {report[k]['handshakes']} handshakes, {report[k]['resumed']} resumed"
                    for k in ("status", "inventory")
                ),
                flush=True,
            )
            for kind in ("status", "inventory"):
                r = report[kind]
                print(
                    f"{n:>6} {kind:>9} {r['first_s']:>8.2f} {r['first_cpu_s']:>6.2f} "
                    f"{r['first_agents_cpu_s']:>7.2f} {r['later_s']:>8.3f} "
                    f"{r['later_cpu_s']:>6.2f} {r['later_agents_cpu_s']:>7.2f} "
                    f"{r['later_gc_s']:>5.2f} {r['failures']:>4} "
                    f"{report['rss_end_mib']:>13.1f} ({report['peak_rss_mib']:.1f})"
                    f" {report['agents_started_s']:>11.1f}",
                    flush=True,
                )
                print(f"         later sweeps: {r['later_all_s']}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
