"""A network namespace of the test's own, with a TAP device a guest's second NIC plugs into.

QEMU's user networking delivers every connection from one address (10.0.2.2), so a storm
through it only ever meets the agent's per-peer cap. Here the storm gets a wire of its
own: a TAP device inside a namespace the test creates, with many addresses on it, a
DHCP server (dnsmasq) answering the guest's second NIC, and the storm clients running in
that namespace. QEMU itself stays in the host's namespace, so its user network (the
conductor's way in, forwarded from 127.0.0.1) is untouched: it gets the TAP as an open
file descriptor, opened inside the namespace by a small helper (a TAP device is attached
in the network namespace of whoever opens ``/dev/net/tun``).
Nothing here touches the host's own network: the namespace and everything in it is
removed when the test ends.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .harness import HarnessError

# Opens /dev/net/tun inside the namespace, attaches it to the named TAP device and hands
# the descriptor back over the Unix socket given as the second argument.
ATTACH_TAP = """
import fcntl, os, socket, struct, sys
name, channel = sys.argv[1], int(sys.argv[2])
TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
socket.send_fds(socket.socket(fileno=channel), [b"tap"], [fd])
"""


def require_namespace_tools() -> None:
    """Fail (never skip) without what the namespace needs."""
    missing = [tool for tool in ("ip", "dnsmasq") if shutil.which(tool) is None]
    if missing:
        raise HarnessError(
            f"e2e needs {', '.join(missing)}: run tools/setup-e2e (iproute2, dnsmasq-base)"
        )
    if os.geteuid() != 0:
        raise HarnessError("the storm test creates a network namespace: it must run as root")
    if not Path("/dev/net/tun").exists():
        raise HarnessError("/dev/net/tun is missing: the storm test needs a TAP device")


class Namespace:
    """``ip netns add``; every process started here is stopped and the namespace deleted
    on exit, whatever happened."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Namespace:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        subprocess.run(["ip", "netns", "delete", self.name], check=False)

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True)

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def start(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        """A process inside the namespace (its output in ``log``), stopped on exit."""
        with log.open("wb") as output:
            process = subprocess.Popen(
                self.command(*args),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def add_tap(
        self,
        device: str,
        network: ipaddress.IPv4Network | ipaddress.IPv6Network,
        hosts: list[str],
    ) -> None:
        """A TAP device in the namespace, up, with ``hosts`` (the first one primary)."""
        self.ip("tuntap", "add", "dev", device, "mode", "tap")
        for host in hosts:
            self.add_address(device, network, host)
        self.ip("link", "set", device, "up")

    def add_address(
        self, device: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network, host: str
    ) -> None:
        """``host`` on ``device``; an IPv6 one usable at once (no duplicate address probe:
        the namespace is the test's own)."""
        extra = ["nodad"] if network.version == 6 else []
        self.ip("addr", "add", f"{host}/{network.prefixlen}", "dev", device, *extra)

    def open_tap(self, device: str) -> int:
        """A descriptor attached to ``device``, opened inside the namespace, inheritable."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours, theirs:
            subprocess.run(
                self.command(sys.executable, "-c", ATTACH_TAP, device, str(theirs.fileno())),
                pass_fds=[theirs.fileno()],
                check=True,
                timeout=30,
            )
            _, fds, _, _ = socket.recv_fds(ours, 16, 1)
        if not fds:
            raise HarnessError(f"no descriptor for the TAP device {device} in {self.name}")
        os.set_inheritable(fds[0], True)
        return fds[0]

    def serve_dhcp(
        self, device: str, lease: tuple[str, str], server: str, workdir: Path
    ) -> subprocess.Popen[bytes]:
        """dnsmasq on ``device``: DHCP only (no DNS), one address for one MAC, no router,
        so the guest's default route stays on its first NIC."""
        mac, address = lease
        log = workdir / "dnsmasq.log"
        return self.start(
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            f"--interface={device}",
            "--bind-interfaces",
            f"--listen-address={server}",
            f"--dhcp-range={address},static,12h",
            f"--dhcp-host={mac},{address}",
            "--dhcp-option=option:router",
            "--dhcp-option=option:dns-server",
            "--dhcp-authoritative",
            f"--dhcp-leasefile={workdir / 'dnsmasq.leases'}",
            "--pid-file=",
            "--user=root",
            "--group=root",
            "--log-dhcp",
            f"--log-facility={log}",
            log=workdir / "dnsmasq.out",
        )

    def wait_for_listener(self, address: str, port: int, timeout: float) -> float:
        """Seconds until a TCP connect from inside the namespace to ``address`` succeeds."""
        started = time.monotonic()
        probe = (
            "import socket, sys\n"
            "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()\n"
        )
        while time.monotonic() - started < timeout:
            done = subprocess.run(
                self.command(sys.executable, "-c", probe, address, str(port)),
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return time.monotonic() - started
            time.sleep(1)
        raise HarnessError(f"nothing listens on {address}:{port} seen from {self.name}")
