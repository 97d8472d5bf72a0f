"""Where a process tree sent anything on IP: its outbound audit under ``strace``.

The passive tests run each agent under ``strace -D -f -e trace=connect,sendto,sendmsg``
(:func:`audit_prefix`): every ``connect`` and every datagram sent to an address, by the
agent and any process it starts, lands in a log that :func:`outbound` reads. ``-D``
keeps the tracer out of the way: the agent keeps the process id the test started, so
stopping or killing it reaches the agent itself. Sends on connected sockets carry no
address and are covered by their ``connect``; local families (``AF_UNIX``,
``AF_NETLINK``) are not network traffic and are left out.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .launcher import IronicError

AUDITED_CALLS = "connect,sendto,sendmsg"
CALL = re.compile(r"^(\d+)\s+(connect|sendto|sendmsg)\(")
INET = re.compile(r'sa_family=AF_INET, sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
INET6 = re.compile(
    r'sa_family=AF_INET6, sin6_port=htons\((\d+)\),.*?inet_pton\(AF_INET6, "([^"]+)"'
)


@dataclass(frozen=True)
class Outbound:
    pid: int
    call: str
    host: str
    port: int

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def audit_prefix(log: Path) -> list[str]:
    """The command that runs what follows it with its outbound calls logged to ``log``."""
    if shutil.which("strace") is None:
        raise IronicError("strace is needed to audit the agent's connections (tools/setup)")
    # -q (not -qq): "+++ exited with N +++" lines tell when the log is complete.
    return [
        *("strace", "-D", "-f", "--seccomp-bpf", "-q", "-e", "signal=none"),
        *("-e", f"trace={AUDITED_CALLS}", "-o", str(log)),
    ]


def outbound(trace: str) -> list[Outbound]:
    """Every IPv4/IPv6 destination in an strace log, in order."""
    found = []
    for line in trace.splitlines():
        call = CALL.match(line)
        if call is None:
            continue
        address = INET.search(line) or INET6.search(line)
        if address is None:
            continue
        port, host = address.groups()
        found.append(Outbound(int(call.group(1)), call.group(2), host, int(port)))
    return found


def finished(trace: str, pid: int) -> bool:
    """Whether the log already ends the life of ``pid`` (it then holds all its calls)."""
    return re.search(rf"^{pid}\s+\+\+\+ (exited with|killed by) ", trace, re.MULTILINE) is not None


def read_complete(log: Path, pid: int, timeout: float = 10.0) -> str:
    """The log once the tracer has written ``pid``'s end (the process must have ended)."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.is_file() else ""
        if finished(text, pid):
            return text
        if time.monotonic() > deadline:
            raise IronicError(f"{log} never recorded the end of process {pid}")
        time.sleep(0.1)
