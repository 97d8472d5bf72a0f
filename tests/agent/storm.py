"""A connection storm against a real tacet-agent process on loopback, and what it did.

Shared by the storm test (a short storm, its bounds asserted) and ``bench/storm.py``
(a longer one, its figures printed). The agent runs in its own process so that its RSS
and its log lines are its own. The storm comes from 127.0.0.2 and up (loopback is a
/8), the legitimate poller from 127.0.0.1, each poll on a new TLS connection: the
hardest case, since every poll needs a slot while the agent is full.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.local_agent import agent_argv

ROOT = Path(__file__).resolve().parent.parent.parent
POLLER = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_descriptor_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


class AgentProcess:
    """``python -m agent`` on 127.0.0.1 with its stderr (its log) in a file."""

    def __init__(self, tmp: Path, settings: str = "") -> None:
        self.port = free_port()
        (tmp / "cmdline").write_text(
            f"ipa-listen-host=127.0.0.1 tacet.listen-port={self.port} {settings}\n"
        )
        (tmp / "etc").mkdir(exist_ok=True)
        self.log_path = tmp / "agent.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            agent_argv(tmp),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        assert self.process.stdout is not None
        banner = self.process.stdout.readline()
        assert "listening on" in banner, (banner, self.log_path.read_text()[-2000:])
        pem = (tmp / "state" / "agent-cert.pem").read_text()
        self.context = ssl.create_default_context(cadata=pem)
        self.context.check_hostname = False
        self.ps = psutil.Process(self.process.pid)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def log_lines(self) -> int:
        return len(self.log_path.read_text().splitlines())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


async def poll_status(context: ssl.SSLContext, port: int, timeout: float) -> float:
    """One ``GET /v1/status`` on a new TLS connection from 127.0.0.1: its seconds."""
    started = time.monotonic()

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, local_addr=(POLLER, 0)
        )
        try:
            writer.write(b"GET /v1/status HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            return await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    answer = await asyncio.wait_for(exchange(), timeout)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return time.monotonic() - started


@dataclass
class StormCounts:
    connected: int = 0
    closed_by_agent: int = 0  # refused at once, evicted or timed out
    connect_failures: int = 0
    open_now: int = 0  # connections the storm holds open (connected, not yet closed)
    open_peak: int = 0
    polls: list[float] = field(default_factory=list)  # seconds per answered poll
    failed_polls: list[str] = field(default_factory=list)

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.polls)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0

    @property
    def p50(self) -> float:
        return statistics.median(self.polls) if self.polls else 0.0


def client_hello() -> bytes:
    """The first flight of a TLS client: what a slow handshake drips."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


class Storm:
    """``idle`` TCP connections that never speak, ``tls_idle`` TLS ones that never send a
    request, ``slowloris`` ones sending a request head a byte at a time and ``hello``
    ones sending a TLS ClientHello a byte at a time (a slow handshake: all a client
    without credentials gets to do against mutual TLS); each one reconnects when the
    agent closes it, until ``stop``. Connections come from ``sources`` in turn, or from
    127.0.0.2 and up, ``per_address`` each."""

    def __init__(
        self,
        port: int,
        idle: int,
        tls_idle: int,
        slowloris: int,
        per_address: int = 50,
        drip: float = 1.0,
        host: str = "127.0.0.1",
        sources: list[str] | None = None,
        hello: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.sources = sources or []
        self.counts = StormCounts()
        self.stopping = asyncio.Event()
        self.per_address = per_address
        self.drip_every = drip
        self.plan = (
            ["idle"] * idle + ["tls"] * tls_idle + ["slowloris"] * slowloris + ["hello"] * hello
        )
        self.context = ssl.create_default_context()
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE  # the storm does not care who answers
        self.hello = client_hello()
        self.tasks: list[asyncio.Task[None]] = []

    def source(self, index: int) -> str:
        if self.sources:
            return self.sources[index % len(self.sources)]
        return f"127.0.{2 + index // self.per_address // 250}.{2 + index // self.per_address % 250}"

    async def start(self) -> None:
        for index, kind in enumerate(self.plan):
            self.tasks.append(asyncio.create_task(self.hold(kind, self.source(index))))
            if index % 100 == 99:
                await asyncio.sleep(0)  # let the connects go out in waves, as a storm would

    async def stop(self) -> int:
        """Cancel every connection; how many did not end within 5 s (left behind)."""
        self.stopping.set()
        for task in self.tasks:
            task.cancel()
        _, pending = await asyncio.wait(self.tasks, timeout=5)
        return len(pending)

    async def hold(self, kind: str, source: str) -> None:
        while not self.stopping.is_set():
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.host,
                        self.port,
                        ssl=self.context if kind in ("tls", "slowloris") else None,
                        local_addr=(source, 0),
                    ),
                    15,
                )
                self.counts.connected += 1
                self.counts.open_now += 1
                self.counts.open_peak = max(self.counts.open_peak, self.counts.open_now)
                if kind == "slowloris":
                    head = b"GET /v1/status HTTP/1.1\r\nHost: agent\r\nX-Slow: " + b"a" * 4000
                    await self.drip(reader, writer, head)
                elif kind == "hello":
                    await self.drip(reader, writer, self.hello)
                else:
                    await reader.read()  # until the agent closes it
                self.counts.closed_by_agent += 1
            except (TimeoutError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
                self.counts.connect_failures += 1
                await asyncio.sleep(0.5)
            finally:
                if writer is not None:
                    self.counts.open_now -= 1
                    writer.transport.abort()

    async def drip(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
    ) -> None:
        """``data`` a byte every ``drip`` seconds, until the agent closes the connection."""
        for byte in data:
            if self.stopping.is_set():
                return
            writer.write(bytes([byte]))
            with contextlib.suppress(asyncio.TimeoutError):
                if await asyncio.wait_for(reader.read(1), self.drip_every) == b"":
                    return  # closed by the agent


@dataclass
class StormResult:
    counts: StormCounts
    rss_before: int
    rss_peak: int
    rss_after: int
    log_lines: int
    rejections: dict[str, int]


async def run_storm(
    agent: AgentProcess,
    seconds: float,
    settle: float,
    idle: int,
    tls_idle: int,
    slowloris: int,
    poll_timeout: float = 1.0,
) -> StormResult:
    """The storm for ``seconds`` while polling at 1 Hz; RSS ``settle`` s after it."""
    await poll_status(agent.context, agent.port, 10)  # up and warm
    await asyncio.sleep(1)
    rss_before = agent.rss()
    lines_before = agent.log_lines()
    # The storm runs in a process of its own: in the poller's event loop, its thousands
    # of connections would delay the polls on the client side.
    storm = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.agent.storm",
        str(agent.port),
        str(idle),
        str(tls_idle),
        str(slowloris),
        str(seconds),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    counts = StormCounts()
    peak = rss_before
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tick = time.monotonic()
        try:
            counts.polls.append(await poll_status(agent.context, agent.port, poll_timeout))
        except (TimeoutError, OSError, ssl.SSLError, AssertionError) as exc:
            counts.failed_polls.append(f"{type(exc).__name__}: {exc}")
        peak = max(peak, agent.rss())
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    output, _ = await storm.communicate()
    for key, value in json.loads(output).items():
        setattr(counts, key, value)
    await asyncio.sleep(settle)
    status = await status_json(agent)
    return StormResult(
        counts,
        rss_before,
        peak,
        agent.rss(),
        agent.log_lines() - lines_before,
        status.get("rejections", {}),
    )


async def status_json(agent: AgentProcess) -> dict:
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port, ssl=agent.context)
    writer.write(b"GET /v1/status HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    body = answer.split(b"\r\n\r\n", 1)[1]
    match = re.search(rb"\{.*\}", body, re.S)
    return json.loads(match.group(0)) if match else {}


async def storm_main(arguments: argparse.Namespace) -> None:
    total = arguments.idle + arguments.tls_idle + arguments.slowloris + arguments.hello
    raise_descriptor_limit(total + 256)
    storm = Storm(
        arguments.port,
        arguments.idle,
        arguments.tls_idle,
        arguments.slowloris,
        host=arguments.host,
        sources=arguments.sources.split(",") if arguments.sources else None,
        hello=arguments.hello,
    )
    await storm.start()
    await asyncio.sleep(arguments.seconds)
    await storm.stop()  # a client task that ignores its cancellation is left behind
    counts = storm.counts
    print(
        json.dumps(
            {
                "connected": counts.connected,
                "closed_by_agent": counts.closed_by_agent,
                "connect_failures": counts.connect_failures,
                "open_peak": counts.open_peak,
            }
        ),
        flush=True,
    )


def storm_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="a connection storm; prints its counts (JSON)")
    for name in ("port", "idle", "tls_idle", "slowloris"):
        parser.add_argument(name, type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--sources", default="", help="source addresses, comma-separated")
    parser.add_argument("--hello", type=int, default=0, help="slow TLS handshakes")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(storm_main(storm_arguments(sys.argv[1:])))
    os._exit(0)  # not waiting on connections the storm left behind


async def memory_per_connection(agent: AgentProcess, count: int, use_tls: bool) -> float:
    """The agent's RSS growth per held connection, in bytes: ``count`` idle TCP
    connections (no TLS at all), or TLS ones that completed the handshake and sent
    nothing, all held at once (below the caps and the timeouts)."""
    raise_descriptor_limit(count + 256)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    await poll_status(agent.context, agent.port, 10)
    await asyncio.sleep(1)
    before = agent.rss()
    held = []
    for index in range(count):
        source = f"127.0.3.{2 + index // 50}"
        held.append(
            await asyncio.open_connection(
                "127.0.0.1", agent.port, ssl=context if use_tls else None, local_addr=(source, 0)
            )
        )
    await asyncio.sleep(1)
    grown = agent.rss() - before
    for _, writer in held:
        writer.transport.abort()
    return grown / count
