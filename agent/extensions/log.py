"""``log.collect_system_logs``: what an operator needs to debug a node, as base64 tar.gz."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import shutil
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..logs import printable

if TYPE_CHECKING:
    from ..core import Agent

MAX_FILE_BYTES = 4 * 1024 * 1024
COMMAND_TIMEOUT = 15
COMMANDS = {
    "journal.txt": ["journalctl", "--boot", "--no-pager", "--output", "short-precise"],
    "dmesg.txt": ["dmesg", "--ctime"],
    "ip-addr.txt": ["ip", "addr"],
    "ip-route.txt": ["ip", "route"],
    "lsblk.txt": ["lsblk", "--all", "--output", "NAME,SIZE,TYPE,FSTYPE,MOUNTPOINT,MODEL,SERIAL"],
    # The kernel's network counters since boot, e.g. TcpExtListenOverflows: connects
    # dropped because the agent's accept queue was full.
    "nstat.txt": ["nstat", "-a", "-s", "-z"],  # since boot, no history file, zeros too
}
LOG_FILES = ("/var/log/syslog", "/var/log/messages")


class RingHandler(logging.Handler):
    """Keeps the agent's own most recent log lines for collect_system_logs."""

    def __init__(self, lines: int = 5000) -> None:
        super().__init__()
        self.records: deque[str] = deque(maxlen=lines)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


AGENT_LOG = RingHandler()


def _tail(data: bytes) -> bytes:
    return data[-MAX_FILE_BYTES:]


def _run(argv: list[str]) -> bytes:
    if shutil.which(argv[0]) is None:
        return f"{argv[0]}: not installed\n".encode()
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(argv)}: {exc}\n".encode()
    return done.stdout + (done.stderr and b"\n--- stderr ---\n" + done.stderr)


# psutil's status names as the one-letter STAT of ``ps aux``.
STATES = {
    "running": "R",
    "sleeping": "S",
    "disk-sleep": "D",
    "stopped": "T",
    "tracing-stop": "t",
    "zombie": "Z",
    "dead": "X",
    "idle": "I",
    "parked": "P",
    "waking": "W",
    "wake-kill": "K",
}
PS_ATTRS = ["username", "pid", "cpu_times", "memory_info", "memory_percent", "status"]
PS_ATTRS += ["create_time", "cmdline", "name"]


@dataclass(frozen=True)
class ProcessRow:
    user: str
    pid: int
    cpu_percent: float  # CPU time over the process's lifetime, as ps computes %CPU
    mem_percent: float
    rss_kib: int
    state: str
    started: float  # Unix time
    command: str


def process_rows(now: float | None = None) -> list[ProcessRow]:
    """Every process, read with psutil: the ramdisk has no ``ps`` to run."""
    import psutil  # only when logs are collected: keeps it off the agent's start

    now = time.time() if now is None else now
    rows = []
    for process in psutil.process_iter(PS_ATTRS, ad_value=None):
        info = process.info
        times, memory, started = info["cpu_times"], info["memory_info"], info["create_time"]
        cpu = 0.0
        if times is not None and started is not None and now > started:
            cpu = 100.0 * (times.user + times.system) / (now - started)
        command = " ".join(info["cmdline"] or ()) or f"[{info['name'] or '?'}]"
        rows.append(
            ProcessRow(
                user=info["username"] or "?",
                pid=info["pid"],
                cpu_percent=cpu,
                mem_percent=info["memory_percent"] or 0.0,
                rss_kib=(memory.rss // 1024) if memory is not None else 0,
                state=STATES.get(info["status"] or "", "?"),
                started=started or 0.0,
                command=command,
            )
        )
    return sorted(rows, key=lambda row: row.pid)


def format_process_table(rows: list[ProcessRow], now: float | None = None) -> str:
    """A ``ps aux``-like table: the time of day for processes started today, else the date."""
    today = time.localtime(time.time() if now is None else now)[:3]
    lines = [f"{'USER':<12} {'PID':>7} {'%CPU':>5} {'%MEM':>5} {'RSS':>9} STAT START COMMAND"]
    for row in rows:
        started = time.localtime(row.started)
        start = time.strftime("%H:%M" if started[:3] == today else "%b%d", started)
        lines.append(
            f"{row.user[:12]:<12} {row.pid:>7} {row.cpu_percent:>5.1f} {row.mem_percent:>5.1f} "
            f"{row.rss_kib:>9} {row.state:<4} {start:<5} {printable(row.command)}"
        )
    return "\n".join(lines) + "\n"


def own_memory(status: str = "/proc/self/status") -> bytes:
    """The agent's memory split by the kernel (anonymous, file-backed, peak): a heap
    that grew shows in RssAnon, library pages first touched in RssFile."""
    try:
        with open(status, "rb") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        return f"{status}: {error.strerror}\n".encode()
    return b"".join(line + b"\n" for line in lines if line.startswith((b"Vm", b"Rss")))


def collect_archive(commands: dict[str, list[str]] | None = None) -> bytes:
    """The log bundle; ``commands`` replaces the programs run (tests pass ``{}``)."""
    # The process table first: the agent's own memory, before this bundle's buffers.
    files: dict[str, bytes] = {
        "ps.txt": _tail(format_process_table(process_rows()).encode()),
        "agent-memory.txt": own_memory(),
    }
    for name, argv in (COMMANDS if commands is None else commands).items():
        files[name] = _tail(_run(argv))
    for path in LOG_FILES:
        try:
            with open(path, "rb") as handle:
                handle.seek(0, 2)
                size = handle.tell()
                handle.seek(max(0, size - MAX_FILE_BYTES))
                files[Path(path).name] = handle.read()
        except OSError:
            continue
    files["tacet-agent.log"] = _tail("\n".join(AGENT_LOG.records).encode() + b"\n")
    import tarfile  # only when logs are collected (it pulls in bz2, lzma, ...)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def register(agent: Agent) -> None:
    async def collect_system_logs() -> dict[str, Any]:
        data = await asyncio.get_running_loop().run_in_executor(None, collect_archive)
        return {"system_logs": base64.b64encode(data).decode()}

    agent.registry.add("log", "collect_system_logs", collect_system_logs)
