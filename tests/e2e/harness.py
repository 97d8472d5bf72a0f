"""Boot the built ramdisk in QEMU (TCG) the way a data centre does, and talk to it.

iPXE from the NIC's option ROM gets DHCP and TFTP (its script) from QEMU's user
networking (``restrict=on``: the guest reaches nothing but what we forward) and loads the
kernel, the initramfs and the per-node secrets initrd over HTTP from a host server. The
agent's port is forwarded to 127.0.0.1 only; host services (boot and image servers, fake
ironic) are reached through ``guestfwd``.
Everything the guest sends is captured (``filter-dump``) so tests can prove what it
connected to.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import os
import random
import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

DEFAULT_RAMDISK = Path("/var/tmp/tacet-ramdisk/out/tacet-ramdisk")
GUEST_IP = "10.0.2.15"
IMAGE_HOST = "10.0.2.100"  # guestfwd -> the host's image server
IRONIC_HOST = "10.0.2.101"  # guestfwd -> the host's fake ironic
BOOT_HOST = "10.0.2.102"  # guestfwd -> the host's boot server (kernel, initramfs over HTTP)
BOOT_FILES = ("kernel", "initramfs", "node.cpio")
IRONIC_PORT = 6385
AGENT_PORT = 9999
BOOT_TIMEOUT = float(os.environ.get("TACET_E2E_BOOT_TIMEOUT", "240"))


class HarnessError(AssertionError):
    """The VM or a host service did not do what the test needs; the message says why."""


@dataclass(frozen=True)
class Ramdisk:
    kernel: Path
    initramfs: Path
    build: dict[str, Any]

    @classmethod
    def locate(cls) -> Ramdisk:
        """The ramdisk named by TACET_RAMDISK (path without extension) or the default build."""
        base = Path(os.environ.get("TACET_RAMDISK", str(DEFAULT_RAMDISK)))
        kernel, initramfs = base.with_suffix(".kernel"), base.with_suffix(".initramfs")
        for path in (kernel, initramfs):
            if not path.is_file():
                raise HarnessError(
                    f"{path} does not exist: build the ramdisk first (tools/build-ramdisk)"
                    " or point TACET_RAMDISK at one"
                )
        info_path = base.with_suffix(".build.json")
        build = json.loads(info_path.read_text()) if info_path.is_file() else {}
        return cls(kernel, initramfs, build)


def seabios_serial_args(workdir: Path) -> list[str]:
    """Have SeaBIOS (and so iPXE) mirror their text output to COM1, the serial console."""
    sercon = workdir / "sercon-port"
    sercon.write_bytes(struct.pack("<H", 0x3F8))
    return ["-fw_cfg", f"name=etc/sercon-port,file={sercon}"]


# Ports handed to QEMU's forwards are chosen below the kernel's ephemeral range: a port
# picked by binding to port 0 is free again once the probe socket closes, and the next
# bind to port 0 (a test's HTTP server) or an outgoing connection may take it before
# QEMU binds it, and QEMU then exits at once.
FORWARD_PORTS = range(20000, 32768)
_handed_out: set[int] = set()


def free_port() -> int:
    """A free 127.0.0.1 port outside the ephemeral range, never the same one twice."""
    for port in random.sample(FORWARD_PORTS, len(FORWARD_PORTS)):
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise HarnessError("no free port left for QEMU's forwards")


def require_tools() -> None:
    """Fail (never skip) when the machine cannot run the e2e stage."""
    missing = [t for t in ("qemu-system-x86_64", "socat") if shutil.which(t) is None]
    rom = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")
    if not rom.exists() and not Path("/usr/share/qemu/pxe-virtio.rom").exists():
        missing.append("ipxe-qemu (iPXE option ROMs)")
    if missing:
        raise HarnessError(
            "e2e needs " + ", ".join(missing) + ": run tools/setup-e2e (apt-get install"
            " qemu-system-x86 ipxe-qemu socat)"
        )


@dataclass
class Shape:
    """The hardware of one guest."""

    name: str
    machine: str = "pc"
    nic: str = "virtio-net-pci"
    mac: str = "52:54:00:7a:e2:01"
    disk: str = "virtio"  # virtio | ahci | nvme
    disk_serial: str = "TCE2E0001"
    disk_bytes: int = 2 * 1024**3
    system_serial: str = "SYS-E2E-0001"
    uuid: str = "7ac0e2e0-7ac0-4ac0-8ac0-7ac0000000e1"
    memory_mib: int = 2048

    def machine_args(self, console: Path) -> list[str]:
        """The emulated machine, its serial console and its SMBIOS identity: what every
        start of this guest shares, from the network boot or from its disk."""
        return [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-machine",
            self.machine,
            "-m",
            str(self.memory_mib),
            "-smp",
            "2",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            f"file:{console}",
            "-smbios",
            f"type=1,manufacturer=Tacet Labs,product=E2E {self.name},"
            f"serial={self.system_serial},uuid={self.uuid}",
        ]

    def device_args(self, disk_path: Path) -> list[str]:
        args = ["-drive", f"file={disk_path},if=none,id=d0,format=raw,cache=unsafe"]
        if self.disk == "virtio":
            args += ["-device", f"virtio-blk-pci,drive=d0,serial={self.disk_serial}"]
        elif self.disk == "ahci":
            args += [
                "-device",
                "ahci,id=ahci0",
                "-device",
                f"ide-hd,drive=d0,bus=ahci0.0,serial={self.disk_serial}",
            ]
        elif self.disk == "nvme":
            args += ["-device", f"nvme,drive=d0,serial={self.disk_serial}"]
        else:
            raise ValueError(self.disk)
        return args


@dataclass
class VM:
    """One QEMU guest booted over iPXE; ``console`` is the serial log."""

    workdir: Path
    ramdisk: Ramdisk
    shape: Shape
    kernel_args: str = ""
    secrets: bytes | None = None  # the per-node initrd (newc cpio)
    guestfwds: dict[tuple[str, int], int] = field(default_factory=dict)
    extra_hostfwds: dict[int, int] = field(default_factory=dict)  # guest port -> host port
    host_port: int = 0
    # More devices (a second NIC), and the descriptors QEMU inherits for them (a TAP's).
    extra_args: list[str] = field(default_factory=list)
    pass_fds: tuple[int, ...] = ()
    # "http": iPXE gets its script by TFTP (DHCP + TFTP from QEMU, like a data centre's
    # PXE) and the kernel and initrds over HTTP from a host server through guestfwd, which
    # is how iPXE is used in practice; "tftp": everything by TFTP (slirp's TFTP sends
    # 512-byte blocks in lock step: about 5 s more for the 55 MiB initramfs under TCG).
    boot_over: str = "http"
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    # Host monotonic times at which the serial console first showed the iPXE banner, its
    # DHCP lease, its script, the kernel's first line, /init and the agent's banner
    # (SeaBIOS's serial console carries iPXE's output).
    milestones: dict[str, float] = field(default_factory=dict)
    boot_server: BackgroundApp | None = None
    boot_requests: list[tuple[str, str]] = field(default_factory=list)

    @property
    def console(self) -> Path:
        return self.workdir / "console.log"

    @property
    def pcap(self) -> Path:
        return self.workdir / "guest.pcap"

    @property
    def disk(self) -> Path:
        return self.workdir / "disk.raw"

    def command(self) -> list[str]:
        tftp = self.workdir / "tftp"
        netdev = [
            "user,id=n0,restrict=on",
            f"hostfwd=tcp:127.0.0.1:{self.host_port}-:{AGENT_PORT}",
            f"tftp={tftp},bootfile=boot.ipxe",
        ]
        for guest_port, port in self.extra_hostfwds.items():
            netdev.append(f"hostfwd=tcp:127.0.0.1:{port}-:{guest_port}")
        for (guest_ip, guest_port), port in self.guestfwds.items():
            netdev.append(f"guestfwd=tcp:{guest_ip}:{guest_port}-cmd:socat - TCP:127.0.0.1:{port}")
        s = self.shape
        return [
            *s.machine_args(self.console),
            "-netdev",
            ",".join(netdev),
            "-device",
            f"{s.nic},netdev=n0,mac={s.mac}",
            "-object",
            f"filter-dump,id=dump0,netdev=n0,file={self.pcap}",
            *s.device_args(self.disk),
            *seabios_serial_args(self.workdir),
            *self.extra_args,
            "-boot",
            "n",
        ]

    def start(self) -> None:
        tftp = self.workdir / "tftp"
        tftp.mkdir(parents=True, exist_ok=True)
        files = {"kernel": self.ramdisk.kernel, "initramfs": self.ramdisk.initramfs}
        if self.secrets is not None:
            (tftp / "node.cpio").write_bytes(self.secrets)
            files["node.cpio"] = tftp / "node.cpio"
        if self.boot_over == "http":
            server = ImageServer(files)
            self.boot_requests = server.requests
            self.boot_server = BackgroundApp(server.app).__enter__()
            self.guestfwds[(BOOT_HOST, 80)] = self.boot_server.port
            prefix = f"http://{BOOT_HOST}/"
        elif self.boot_over == "tftp":
            for name, path in files.items():
                if path.parent != tftp:
                    shutil.copyfile(path, tftp / name)
            prefix = ""
        else:
            raise ValueError(self.boot_over)
        lines = [
            "#!ipxe",
            # panic=1: a guest kernel that panics reboots, and -no-reboot makes QEMU exit,
            # so the harness sees it at once instead of waiting out its boot timeout.
            f"kernel {prefix}kernel console=ttyS0,115200 BOOTIF=01-${{net0/mac:hexhyp}}"
            f" panic=1 {self.kernel_args}",
            f"initrd {prefix}initramfs",
        ]
        if self.secrets is not None:
            lines.append(f"initrd {prefix}node.cpio")
        lines.append("boot")
        (tftp / "boot.ipxe").write_text("\n".join(lines) + "\n")
        if not self.disk.exists():
            with self.disk.open("wb") as f:
                f.truncate(self.shape.disk_bytes)
        self.host_port = self.host_port or free_port()
        command = self.command()
        (self.workdir / "qemu-command.txt").write_text(" ".join(command) + "\n")
        self.started_at = time.monotonic()
        self.milestones = {}
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=(self.workdir / "qemu.out").open("wb"),
            stderr=subprocess.STDOUT,
            pass_fds=self.pass_fds,
        )
        watcher = threading.Thread(
            target=self._watch_console, args=(self.process, self.milestones), daemon=True
        )
        watcher.start()

    def _watch_console(
        self, process: subprocess.Popen[bytes], milestones: dict[str, float]
    ) -> None:
        """Note when iPXE, the kernel, /init and the agent first print (50 ms resolution)."""
        wanted = {
            "ipxe": b"Open Source Network Boot Firmware",
            "dhcp": b"net0: " + GUEST_IP.encode(),  # iPXE has its lease
            "script": b"[script]",  # boot.ipxe arrived by TFTP
            "linux": b"Linux version",
            "init": b"Run /init",
            "agent": b"listening on https://",
        }
        deadline = self.started_at + 120
        while wanted and time.monotonic() < deadline and process.poll() is None:
            try:
                data = self.console.read_bytes()
            except FileNotFoundError:
                data = b""
            now = time.monotonic()
            for name, marker in list(wanted.items()):
                if marker in data:
                    milestones[name] = now
                    del wanted[name]
            time.sleep(0.05)

    def since_start(self, milestone: str) -> float | None:
        at = self.milestones.get(milestone)
        return None if at is None else at - self.started_at

    def console_text(self) -> str:
        try:
            return self.console.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(
                f"QEMU did not exit within {timeout:g}s; console tail:\n{self.tail()}"
            ) from None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.boot_server is not None:
            self.boot_server.__exit__(None, None, None)
            self.boot_server = None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.console_text().splitlines()[-lines:])

    def output_tail(self, lines: int = 20) -> str:
        """What QEMU itself printed (a refused option or forward ends up here)."""
        try:
            text = (self.workdir / "qemu.out").read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def banner(self) -> re.Match[str] | None:
        return BANNER.search(self.console_text())


BANNER = re.compile(
    r"tacet-agent (?P<version>\S+): listening on https://(?P<address>\S+) "
    r"mode=(?P<mode>\w+) certificate-sha256=(?P<fingerprint>[0-9A-F:]{95})"
)


# --- talking TLS to the agent --------------------------------------------------------


async def peer_der(port: int, context: ssl.SSLContext, server_hostname: str | None) -> bytes:
    """The agent's certificate, from a handshake of its own with the same context.

    aiohttp may release a connection as soon as a small body has arrived, before the
    caller can look at it, so the certificate is not read from the request's connection.
    """
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=server_hostname or "127.0.0.1"
    )
    try:
        der: bytes = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return der


def spki_sha256(der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def binding_ok(binding: dict[str, Any], der: bytes, token: str) -> bool:
    """docs/security.md "Token binding (version 1)", written from that paragraph."""
    spki = spki_sha256(der)
    mac = hmac.new(token.encode(), f"tacet-binding-v1:{spki}".encode(), hashlib.sha256)
    return (
        binding.get("version") == 1
        and hmac.compare_digest(str(binding.get("spki_sha256")), spki)
        and hmac.compare_digest(str(binding.get("hmac_sha256")), mac.hexdigest())
    )


def fingerprint(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


@dataclass
class AgentClient:
    """Plain aiohttp against the forwarded port; TLS context and token as the test says."""

    port: int
    context: ssl.SSLContext
    server_hostname: str | None = None
    token: str | None = None

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.context),
            timeout=aiohttp.ClientTimeout(total=120, sock_connect=5),
        )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def get(self, path: str) -> tuple[int, Any, bytes]:
        """Status, JSON body and the agent's certificate (DER, from a handshake of its own)."""
        status, body = await self.get_json(path)
        return status, body, await peer_der(self.port, self.context, self.server_hostname)

    async def get_json(self, path: str) -> tuple[int, Any]:
        async with (
            self.session() as session,
            session.get(
                self.base + path, headers=self._headers(), server_hostname=self.server_hostname
            ) as response,
        ):
            return response.status, await response.json()

    async def command(self, name: str, params: dict[str, Any] | None = None) -> tuple[int, Any]:
        async with (
            self.session() as session,
            session.post(
                f"{self.base}/v1/commands/",
                params={"wait": "true"},
                json={"name": name, "params": params or {}},
                headers=self._headers(),
                server_hostname=self.server_hostname,
            ) as response,
        ):
            return response.status, await response.json()

    async def wait_command(self, command_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status, body, _ = await self.get(f"/v1/commands/{command_id}")
            if status == 200 and body["command_status"] != "RUNNING":
                return dict(body)
            if time.monotonic() > deadline:
                raise HarnessError(f"command {command_id} still running after {timeout:g}s")
            await asyncio.sleep(1)


class GuestCrashedEarly(HarnessError):
    """The guest's kernel panicked before the agent answered."""


def boot_and_wait(vm: VM, client_for: Callable[[int], AgentClient]) -> tuple[AgentClient, float]:
    """Start the guest and wait for its agent; (client, seconds since QEMU started).

    One more boot when the guest's kernel panicked before the agent answered. QEMU 7.2's
    TCG with two vCPUs now and then lets the kernel trip over its own int3 code patching
    ("Oops: int3" in sched_clock_cpu during early boot, seen twice in ~60 boots here,
    and once in cgroup code after /init). Said loudly in the log, with the panic's lines
    and whether /init had run; a second panic fails.
    """
    for attempt in (1, 2):
        vm.start()
        try:
            client = client_for(vm.host_port)
            return client, asyncio.run(wait_for_agent(vm, client))
        except GuestCrashedEarly:
            vm.stop()
            if attempt == 2:
                raise
            console = vm.console_text()
            when = "after /init" if "Run /init" in console else "before /init"
            oops = [
                line.strip()
                for line in console.splitlines()
                if any(mark in line for mark in ("Oops", "RIP:", "Kernel panic"))
            ]
            print(
                f"e2e: {vm.shape.name}: GUEST KERNEL PANIC {when}, before the agent answered;"
                f" booting it again: {' | '.join(oops[:3])}",
                flush=True,
            )
        except BaseException:
            vm.stop()
            raise
    raise AssertionError("unreachable")


PROBE_EVERY = 0.5  # seconds between the starts of two probes once the banner is out
PROBE_BEFORE_BANNER = 5.0  # ... and before (the agent cannot answer yet; see below)


async def wait_for_agent(vm: VM, client: AgentClient, timeout: float = BOOT_TIMEOUT) -> float:
    """Probe ``/v1/status`` until the agent answers over TLS; seconds since QEMU started.

    A probe starts every PROBE_EVERY s whether or not the earlier ones have finished: a
    connection made before the guest has its address hangs in slirp until the client's
    connect timeout (5 s), and waiting for it would add up to that much to the figure.
    Until the agent's banner (printed once it listens) is on the console, probes start
    only every PROBE_BEFORE_BANNER s: they cannot succeed yet, and the ones hung in slirp
    would all reach the agent at once when the guest gets its address, making it do
    their handshakes before the one that counts.
    """
    deadline = vm.started_at + timeout
    last: BaseException | None = None
    probes: set[asyncio.Task[tuple[int, Any]]] = set()
    last_probe = -math.inf
    try:
        while time.monotonic() < deadline:
            if vm.exited():
                console = vm.console_text()  # (the milestone watcher may have missed the end)
                if "Kernel panic" in console:
                    raise GuestCrashedEarly(
                        "the guest kernel panicked before the agent answered; console tail:\n"
                        + vm.tail()
                    )
                code = vm.process.returncode if vm.process is not None else None
                raise HarnessError(
                    f"QEMU exited ({code}) while booting; its output:\n"
                    f"{vm.output_tail()}\nconsole tail:\n{vm.tail()}"
                )
            banner = vm.since_start("agent") is not None
            if time.monotonic() - last_probe >= (PROBE_EVERY if banner else PROBE_BEFORE_BANNER):
                probes.add(asyncio.create_task(client.get_json("/v1/status")))
                last_probe = time.monotonic()
            if not probes:
                await asyncio.sleep(0.1)
                continue
            # 0.1 s: also notices the banner (the console watcher looks every 50 ms).
            done, probes = await asyncio.wait(
                probes, timeout=0.1, return_when=asyncio.FIRST_COMPLETED
            )
            for probe in done:
                error = probe.exception()
                if error is None and probe.result()[0] == 200:
                    return time.monotonic() - vm.started_at
                if error is not None and not isinstance(
                    error, aiohttp.ClientError | ssl.SSLError | OSError | TimeoutError
                ):
                    raise error
                last = error or HarnessError(f"HTTP {probe.result()[0]}")
    finally:
        for probe in probes:
            probe.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
    raise HarnessError(
        f"no TLS answer within {timeout:g}s (last error: {last!r}); console tail:\n{vm.tail()}"
    )


# --- host services reached through guestfwd ----------------------------------------


class BackgroundApp:
    """An aiohttp application on 127.0.0.1 in its own thread and event loop.

    QEMU's guestfwd needs the port before the guest starts, while the tests' own event
    loop is per test; a thread keeps the service independent of both.
    """

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._runner = web.AppRunner(self.app, access_log=None)
        self.loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._runner.cleanup())

    def __enter__(self) -> BackgroundApp:
        self._thread.start()
        if not self._ready.wait(10):
            raise HarnessError("host service did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class ImageServer:
    """Serves files by name and remembers every request (method, path, peer)."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.requests: list[tuple[str, str]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{name}", self.serve)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        path = self.files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path)


# --- the test image ------------------------------------------------------------------


@dataclass(frozen=True)
class DiskImage:
    path: Path
    sha256: str
    marker_name: str
    marker_text: str
    partition_start: int  # bytes
    partition_bytes: int


def build_image(workdir: Path, size_mib: int = 64) -> DiskImage:
    """A raw disk image: MBR, one Linux partition at 1 MiB, ext4 holding a marker file."""
    for tool in ("sfdisk", "mkfs.ext4"):
        if shutil.which(tool) is None:
            raise HarnessError(f"{tool} is needed to build the test image (util-linux, e2fsprogs)")
    content = workdir / "image-content"
    content.mkdir(parents=True, exist_ok=True)
    marker_text = f"written by the tacet e2e test {os.urandom(8).hex()}\n"
    (content / "tacet-e2e.txt").write_text(marker_text)
    start, part_bytes = 1024 * 1024, (size_mib - 2) * 1024 * 1024
    fs = workdir / "rootfs.ext4"
    fs.unlink(missing_ok=True)
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "e2e-root",
            "-d",
            str(content),
            str(fs),
            f"{part_bytes // 1024}k",
        ],
        check=True,
        env={**os.environ, "E2FSPROGS_FAKE_TIME": "0"},
    )
    image = workdir / "image.raw"
    with image.open("wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    subprocess.run(
        ["sfdisk", "-q", str(image)],
        input=f"label: dos\nstart={start // 512}, size={part_bytes // 512}, type=83\n",
        text=True,
        check=True,
    )
    with image.open("r+b") as out, fs.open("rb") as src:
        out.seek(start)
        shutil.copyfileobj(src, out, 1024 * 1024)
    fs.unlink()
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    return DiskImage(image, digest, "tacet-e2e.txt", marker_text, start, part_bytes)


def mbr_partitions(head: bytes) -> list[tuple[int, int, int]]:
    """(type, start LBA, sectors) of the used MBR entries."""
    if head[510:512] != b"\x55\xaa":
        return []
    result = []
    for i in range(4):
        entry = head[446 + 16 * i : 446 + 16 * (i + 1)]
        ptype = entry[4]
        start, count = struct.unpack("<II", entry[8:16])
        if ptype:
            result.append((ptype, start, count))
    return result


def read_file_from_ext4(disk: Path, offset: int, length: int, name: str, workdir: Path) -> str:
    """Copy the partition out of the disk image and read one file with debugfs."""
    part = workdir / "partition.ext4"
    with disk.open("rb") as src, part.open("wb") as dst:
        src.seek(offset)
        remaining = length
        while remaining:
            chunk = src.read(min(remaining, 1024 * 1024))
            if not chunk:
                break
            dst.write(chunk)
            remaining -= len(chunk)
    done = subprocess.run(
        ["debugfs", "-R", f"cat /{name}", str(part)], capture_output=True, text=True, check=False
    )
    part.unlink()
    return done.stdout


# --- what the guest sent ------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    proto: str  # tcp | udp
    src: str
    dst: str
    dport: int


def guest_flows(pcap: Path, guest_mac: str) -> list[Flow]:
    """Connection attempts by the guest: TCP SYNs and UDP datagrams in frames it sent.

    IPv4 and IPv6 (ICMPv6, i.e. neighbour and router discovery, is not a connection).
    Parses the classic pcap that QEMU's filter-dump writes (Ethernet frames).
    """
    mac = bytes.fromhex(guest_mac.replace(":", ""))
    data = pcap.read_bytes()
    if len(data) < 24:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    flows: list[Flow] = []
    pos = 24
    while pos + 16 <= len(data):
        _, _, caplen, _ = struct.unpack(endian + "IIII", data[pos : pos + 16])
        frame = data[pos + 16 : pos + 16 + caplen]
        pos += 16 + caplen
        if frame[6:12] != mac:
            continue
        ethertype = frame[12:14]
        if ethertype == b"\x08\x00" and len(frame) >= 34:
            ip = frame[14:]
            proto, l4 = ip[9], ip[(ip[0] & 0x0F) * 4 :]
            src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        elif ethertype == b"\x86\xdd" and len(frame) >= 54:
            ip = frame[14:]
            proto, l4 = ip[6], ip[40:]
            src = socket.inet_ntop(socket.AF_INET6, ip[8:24])
            dst = socket.inet_ntop(socket.AF_INET6, ip[24:40])
        else:
            continue
        if proto == 6 and len(l4) >= 14:
            flags = l4[13]
            if flags & 0x02 and not flags & 0x10:  # SYN without ACK: a new connection
                flows.append(Flow("tcp", src, dst, struct.unpack(">H", l4[2:4])[0]))
        elif proto == 17 and len(l4) >= 4:
            flows.append(Flow("udp", src, dst, struct.unpack(">H", l4[2:4])[0]))
    return flows


@contextlib.contextmanager
def running(vm: VM) -> Iterator[VM]:
    vm.start()
    try:
        yield vm
    finally:
        vm.stop()


def report(label: str, value: str) -> None:
    """Figures for the log of the e2e run (pytest -s or the captured output on failure)."""
    print(f"e2e figure: {label}: {value}", flush=True)


# --- UEFI guests (OVMF) ----------------------------------------------------------------

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@dataclass
class UefiVM(VM):
    """The same guest on OVMF, with its own copy of the variable store (its NVRAM).

    iPXE's EFI build hands the kernel its initrds through a virtual file system that the
    kernel's EFI stub reads by the names given as ``initrd=`` on its command line.
    """

    def __post_init__(self) -> None:
        initrds = ["initramfs"] + (["node.cpio"] if self.secrets is not None else [])
        self.kernel_args = " ".join([*(f"initrd={name}" for name in initrds), self.kernel_args])

    @property
    def nvram(self) -> Path:
        return self.workdir / "OVMF_VARS.fd"

    def command(self) -> list[str]:
        for path in (OVMF_CODE, OVMF_VARS):
            if not path.is_file():
                raise HarnessError(f"{path} does not exist: run tools/setup-e2e (Debian ovmf)")
        if not self.nvram.exists():
            shutil.copyfile(OVMF_VARS, self.nvram)
        command = at_pci_slot(super().command(), self.shape.nic, UEFI_NIC_SLOT)
        command = at_pci_slot(command, disk_controller(self.shape), UEFI_DISK_SLOT)
        return [*command, *ovmf_drives(self.nvram)]


# A UEFI guest's NIC and disk controller sit at fixed PCI slots, so that its disk keeps
# its address (and the firmware's device paths to it stay valid) when the VM is started
# again without the NIC.
UEFI_NIC_SLOT = 0x3
UEFI_DISK_SLOT = 0x4


def disk_controller(shape: Shape) -> str:
    return {"virtio": "virtio-blk-pci", "ahci": "ahci", "nvme": "nvme"}[shape.disk]


def at_pci_slot(command: list[str], driver: str, slot: int) -> list[str]:
    """``command`` with the first ``-device driver,...`` placed at ``slot`` of bus 0."""
    out = list(command)
    for i in range(1, len(out)):
        if out[i - 1] == "-device" and out[i].split(",")[0] == driver:
            out[i] = f"{out[i]},addr={slot:#x}"
            return out
    raise HarnessError(f"no -device {driver} in the QEMU command")


def ovmf_drives(nvram: Path) -> list[str]:
    return [
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={nvram}",
    ]


# What the firmware shows when nothing on the disk could be started: OVMF falls back to
# its built-in UEFI shell, SeaBIOS says so (and both would wait forever).
NOTHING_TO_BOOT = (b"Shell> ", b"No bootable device")


@dataclass(frozen=True)
class DiskBoot:
    console: str
    seconds_to_marker: float | None  # QEMU start -> the marker line on the console
    exit_code: int


def boot_from_disk(vm: VM, marker: str, timeout: float = 180) -> DiskBoot:
    """Start ``vm``'s machine again from its disk: no NIC (so no network boot), the same
    disk (for a UEFI guest at the same PCI slot) and, for a UEFI guest, the same NVRAM.
    Waits until QEMU exits (the marker image powers off) and notes when ``marker``
    appeared as a console line."""
    s = vm.shape
    console = vm.workdir / "disk-boot-console.log"
    console.unlink(missing_ok=True)
    command = [*s.machine_args(console), "-net", "none"]
    if isinstance(vm, UefiVM):
        command += at_pci_slot(s.device_args(vm.disk), disk_controller(s), UEFI_DISK_SLOT)
        command += ovmf_drives(vm.nvram)
    else:
        command += s.device_args(vm.disk) + seabios_serial_args(vm.workdir)
    (vm.workdir / "disk-boot-command.txt").write_text(" ".join(command) + "\n")
    wanted = re.compile(rb"^" + re.escape(marker.encode()) + rb"\r?$", re.MULTILINE)
    started = time.monotonic()
    seen: float | None = None
    with (vm.workdir / "disk-boot-qemu.out").open("wb") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        while process.poll() is None and time.monotonic() - started < timeout:
            text = console.read_bytes() if console.exists() else b""
            if seen is None and wanted.search(text):
                seen = time.monotonic() - started
            if any(sign in text for sign in NOTHING_TO_BOOT):
                break
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            process.kill()
        code = process.wait()
    text = console.read_bytes() if console.exists() else b""
    if seen is None and wanted.search(text):
        seen = time.monotonic() - started  # printed just before the power-off
    return DiskBoot(text.decode("utf-8", errors="replace"), seen, code)
