"""Agent performance next to a bare aiohttp TLS app, both on loopback over TLS.

Prints, for tacet-agent and the bare "hello" app started and loaded the same way:
process start to first TLS answer of /v1/status (median), RSS after start, RSS growth
after many requests, /v1/status throughput and p99 under 50 keep-alive connections
(wrk), new-connection TLS handshake p50; and for the agent poll.get_hardware_info
p50 from cache and with refresh. Run with nothing else loaded:

    .venv/bin/python bench/agent.py [--starts 10] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ports import free_port  # noqa: E402

TOKEN = "bench-token"


class Target:
    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.workdir / "state" / "agent-cert.pem"))

    def start(self) -> float:
        """Start the process; seconds until /v1/status answered over TLS."""
        self.port = free_port()
        began = time.perf_counter()
        self.process = subprocess.Popen(
            self.command(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = began + 30
        while time.perf_counter() < deadline:
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw,
                    self.context().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
                ):
                    tls.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if tls.recv(64).startswith(b"HTTP/1.1 200"):
                        return time.perf_counter() - began
            except (OSError, ssl.SSLError):
                time.sleep(0.005)
        raise RuntimeError(f"{self.name} did not answer")

    def rss_mib(self) -> float:
        assert self.process is not None
        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None


class AgentTarget(Target):
    def command(self) -> list[str]:
        (self.workdir / "etc").mkdir(exist_ok=True)
        (self.workdir / "cmdline").write_text(
            f"ipa-listen-host=127.0.0.1 ipa-listen-port={self.port} ipa-agent-token={TOKEN}\n"
        )
        return [
            sys.executable,
            "-m",
            "agent",
            "--cmdline-file",
            str(self.workdir / "cmdline"),
            "--config-dir",
            str(self.workdir / "etc"),
            "--state-dir",
            str(self.workdir / "state"),
            "--power-backend",
            "recording",
        ]


class HelloTarget(Target):
    def __init__(self, name: str, workdir: Path, *extra: str) -> None:
        super().__init__(name, workdir)
        self.extra = list(extra)

    def command(self) -> list[str]:
        state = self.workdir / "state"
        return [
            sys.executable,
            str(ROOT / "bench" / "hello_tls.py"),
            str(self.port),
            str(state / "agent-cert.pem"),
            str(state / "agent-key.pem"),
            *self.extra,
        ]


def wrk(target: Target, seconds: int) -> tuple[float, float]:
    """(requests/s, p99 ms) for /v1/status with 50 keep-alive connections."""
    done = subprocess.run(
        [
            "wrk",
            "-t2",
            "-c50",
            f"-d{seconds}s",
            "--latency",
            f"https://127.0.0.1:{target.port}/v1/status",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", done.stdout).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, p99


def handshakes(target: Target, count: int = 200) -> float:
    """p50 ms of TCP connect + TLS handshake on a new connection."""
    context = target.context()
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        with (
            socket.create_connection(("127.0.0.1", target.port)) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


async def inventory_latency(target: Target, count: int) -> tuple[float, float]:
    import aiohttp

    url = f"https://127.0.0.1:{target.port}/v1/commands/?agent_token={TOKEN}"
    connector = aiohttp.TCPConnector(ssl=target.context())
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(refresh: bool) -> float:
            body = {"name": "poll.get_hardware_info", "params": {"refresh": refresh}}
            began = time.perf_counter()
            async with session.post(url, json=body) as response:
                result = await response.json()
            assert result["command_status"] == "SUCCEEDED", result
            return (time.perf_counter() - began) * 1000

        await one(False)
        cached = [await one(False) for _ in range(count)]
        fresh = [await one(True) for _ in range(max(20, count // 10))]
    return statistics.median(cached), statistics.median(fresh)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating wrk rounds")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)")
        return 1
    # An installed agent has bytecode; an editable checkout under PYTHONDONTWRITEBYTECODE
    # would compile its sources on every start and measure that instead.
    for package in ("agent", "hardware"):
        compileall.compile_dir(ROOT / package, quiet=1)
    workdir = Path(tempfile.mkdtemp(prefix="tacet-bench-"))
    agent = AgentTarget("tacet-agent", workdir)
    hello = HelloTarget("bare aiohttp TLS", workdir)
    lazy = HelloTarget("bare, lazy trust", workdir, "--lazy-trust")
    targets = (agent, hello, lazy)  # the agent first: it creates the certificate all use
    rows: dict[str, dict[str, str]] = {t.name: {} for t in targets}
    for target in targets:
        starts = []
        for _ in range(args.starts):
            starts.append(target.start())
            target.stop()
        rows[target.name]["start to first TLS answer, median ms"] = (
            f"{statistics.median(starts) * 1000:.0f}"
        )
    for target in targets:
        target.start()
    time.sleep(1.5)  # let the agent's first inventory collection finish
    rss_start = {t.name: t.rss_mib() for t in targets}
    for target in targets:
        wrk(target, 2)  # warm-up: allocator pools and TLS session state fill once
    rss_warm = {t.name: t.rss_mib() for t in targets}
    # The machine is noisy: alternate the two apps and report medians of the rounds.
    results: dict[str, list[tuple[float, float]]] = {t.name: [] for t in targets}
    for _ in range(args.rounds):
        for target in targets:
            results[target.name].append(wrk(target, args.seconds))
    for target in targets:
        row = rows[target.name]
        rps = statistics.median(r for r, _ in results[target.name])
        p99 = statistics.median(p for _, p in results[target.name])
        total = sum(int(r * args.seconds) for r, _ in results[target.name])
        row["RSS 1.5 s after start, MiB"] = f"{rss_start[target.name]:.1f}"
        row["requests in the measured rounds"] = f"{total}"
        row["RSS growth during the measured rounds, MiB"] = (
            f"{target.rss_mib() - rss_warm[target.name]:+.1f}"
        )
        row["/v1/status req/s, median of rounds (50 conns)"] = f"{rps:.0f}"
        row["/v1/status p99 ms, median of rounds"] = f"{p99:.2f}"
        row["new-connection handshake p50 ms"] = f"{handshakes(target):.2f}"
    cached, fresh = asyncio.run(inventory_latency(agent, 500))
    rows[agent.name]["get_hardware_info p50 ms, cached"] = f"{cached:.2f}"
    rows[agent.name]["get_hardware_info p50 ms, refresh"] = f"{fresh:.2f}"
    for target in targets:
        target.stop()
    keys = list(rows[agent.name])
    width = max(len(k) for k in keys)
    print(f"{'':<{width}}  {'tacet-agent':>12}  {'bare app':>10}  {'bare+lazy':>10}")
    for key in keys:
        print(
            f"{key:<{width}}  {rows[agent.name][key]:>12}  {rows[hello.name].get(key, '-'):>10}"
            f"  {rows[lazy.name].get(key, '-'):>10}"
        )
    rps_key = "/v1/status req/s, median of rounds (50 conns)"
    ratio = float(rows[agent.name][rps_key]) / float(rows[hello.name][rps_key])
    rounds = ", ".join(
        f"{r:.0f}/{h:.0f}"
        for (r, _), (h, _) in zip(results[agent.name], results[hello.name], strict=True)
    )
    print(f"throughput ratio agent/bare: {ratio:.2f} (rounds agent/bare req/s: {rounds})")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
