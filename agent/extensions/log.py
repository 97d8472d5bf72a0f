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
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    "ps.txt": ["ps", "aux"],
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


def collect_archive(commands: dict[str, list[str]] | None = None) -> bytes:
    files: dict[str, bytes] = {}
    for name, argv in (commands or COMMANDS).items():
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
