"""The ramdisk, PXE-booted in QEMU, provisioned over its one TLS port.

Each guest boots through iPXE from QEMU's option ROM with DHCP and TFTP from QEMU's
user networking (``restrict=on``); the agent's port is forwarded to 127.0.0.1 only.
The figures (boot to first answer, image write) are printed as ``e2e figure:`` lines.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import math
import socket
import ssl
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conductor import pki
from tests.agent.test_active import LOOKUP_TOKEN, NODE_UUID, FakeIronic
from tests.test_tls_policy import ECDSA_SUITES, every_tls12_suite
from wire.tls import TLS13_CIPHERS, client_context

from .conftest import NODE
from .harness import (
    AGENT_PORT,
    BOOT_HOST,
    GUEST_IP,
    IMAGE_HOST,
    IRONIC_HOST,
    IRONIC_PORT,
    VM,
    AgentClient,
    BackgroundApp,
    DiskImage,
    HarnessError,
    ImageServer,
    Ramdisk,
    Shape,
    UefiVM,
    binding_ok,
    boot_and_wait,
    build_image,
    fingerprint,
    free_port,
    guest_flows,
    mbr_partitions,
    read_file_from_ext4,
    report,
)
from .polling import StormConductor, summary

pytestmark = pytest.mark.e2e

VIRTIO = Shape("virtio")
# Ports probed through forwards to the guest: well-known service ports and the
# neighbours of the agent's. Only the agent's may answer.
PROBED_PORTS = (
    21,
    22,
    23,
    25,
    53,
    80,
    111,
    135,
    139,
    443,
    445,
    623,
    2049,
    3260,
    5353,
    5355,
    8080,
    8443,
    9998,
    10000,
    AGENT_PORT,
)


def mtls_context(pki_dir: Path, client: str = "conductor", ca: str = "ca") -> ssl.SSLContext:
    """Verify the agent against our CA and present a client certificate from ``ca``."""
    context = client_context(cafile=pki_dir / "ca" / "ca.pem")
    clients = pki_dir / ca / "clients"
    context.load_cert_chain(clients / f"{client}.pem", clients / f"{client}-key.pem")
    return context


@dataclass
class Booted:
    vm: VM
    client: AgentClient
    seconds_to_answer: float


def boot(vm: VM, client_for: Any) -> Booted:
    """Start the guest and wait for the agent; the guest is stopped if that fails."""
    client, seconds = boot_and_wait(vm, client_for)
    report(f"{vm.shape.name}: QEMU start -> first TLS answer", f"{seconds:.1f} s")
    ipxe = vm.since_start("ipxe")
    if ipxe is not None:
        report(f"{vm.shape.name}: iPXE banner -> first TLS answer", f"{seconds - ipxe:.1f} s")
    return Booted(vm, client, seconds)


def boot_for_conductor(vm: VM, pki_dir: Path) -> Booted:
    """``boot``, reaching the agent as the conductor: our CA, its client certificate."""
    return boot(vm, lambda port: AgentClient(port, mtls_context(pki_dir), server_hostname=NODE))


# --- scenario 1 and 3: passive provisioning, and the edge ----------------------------


@dataclass
class Passive(Booted):
    image: DiskImage
    images: ImageServer
    token: str


@pytest.fixture(scope="module")
def passive(
    ramdisk: Ramdisk,
    pki_dir: Path,
    bundle: pki.NodeBundle,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Passive]:
    workdir = tmp_path_factory.mktemp("passive")
    image = build_image(workdir)
    images = ImageServer({"image.raw": image.path})
    with BackgroundApp(images.app) as server:
        vm = VM(workdir, ramdisk, VIRTIO, secrets=bundle.initrd())
        vm.guestfwds[(IMAGE_HOST, 80)] = server.port
        vm.extra_hostfwds = {p: free_port() for p in PROBED_PORTS if p != AGENT_PORT}
        booted = boot_for_conductor(vm, pki_dir)
        try:
            yield Passive(vm, booted.client, booted.seconds_to_answer, image, images, bundle.token)
        finally:
            vm.stop()


async def test_passive_agent_identity_and_binding(passive: Passive, bundle: pki.NodeBundle):
    status, body, der = await passive.client.get("/v1/status")
    assert status == 200
    # The agent serves the per-node certificate from the appended initrd ...
    assert fingerprint(der) == bundle.fingerprint
    # ... announces it on the serial console, in passive mode ...
    banner = passive.vm.banner()
    assert banner is not None, passive.vm.tail()
    assert banner["mode"] == "passive"
    assert banner["fingerprint"] == bundle.fingerprint
    # ... and proves it holds the token with that certificate's key.
    assert binding_ok(body["binding"], der, bundle.token)
    assert not binding_ok(body["binding"], der, bundle.token + "x")


async def test_edge_refuses_strangers_and_keeps_serving(passive: Passive, pki_dir: Path):
    client = passive.client
    # No client certificate: the handshake itself is refused.
    anonymous = AgentClient(
        client.port, client_context(cafile=pki_dir / "ca" / "ca.pem"), server_hostname=NODE
    )
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await anonymous.command("poll.get_hardware_info")
    # A certificate from another CA: refused too.
    intruder = AgentClient(
        client.port, mtls_context(pki_dir, "intruder", "other-ca"), server_hostname=NODE
    )
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await intruder.command("poll.get_hardware_info")
    # The agent is not someone else's: our CA with another name does not verify.
    wrong_name = AgentClient(client.port, mtls_context(pki_dir), server_hostname="other-node")
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await wrong_name.get("/v1/status")
    # And the agent keeps serving the conductor (after any hold-off for the refusals).
    deadline = time.monotonic() + 60
    while True:
        try:
            status, body = await client.command("standby.sync")
        except (aiohttp.ClientError, ssl.SSLError, ConnectionError):
            status, body = 0, None
        if status == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    assert status == 200 and body["command_status"] == "SUCCEEDED", body


def probe(port: int, wait: float = 3.0) -> bool:
    """True when something in the guest accepted the forwarded connection.

    QEMU accepts on the host side first and closes at once when the guest refuses."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(wait)
        try:
            return sock.recv(1) != b""
        except TimeoutError:
            return True  # held open: a listener in the guest is waiting for us
        except ConnectionError:
            return False


def test_only_the_agent_port_is_open(passive: Passive):
    """The guest has forwards for many ports: only the agent's accepts a connection."""
    ports = {**passive.vm.extra_hostfwds, AGENT_PORT: passive.vm.host_port}
    open_ports = sorted(guest for guest, host in ports.items() if probe(host))
    assert open_ports == [AGENT_PORT]
    # Every forward listens on loopback only.
    command = (passive.vm.workdir / "qemu-command.txt").read_text()
    assert command.count("hostfwd=") == command.count("hostfwd=tcp:127.0.0.1:") == len(ports)
    # ... and the agent still serves after being probed.
    status, body, _ = await_status(passive)
    assert status == 200, body


def await_status(passive: Passive) -> tuple[int, Any, bytes]:
    return asyncio.run(passive.client.get("/v1/status"))


# --- a connection storm against the agent in the guest, with the ramdisk's own limits --


async def log_bundle(client: AgentClient, *names: str) -> dict[str, str]:
    """The named files of the agent's log bundle (log.collect_system_logs)."""
    status, result = await client.command("log.collect_system_logs")
    if status == 200 and result["command_status"] == "RUNNING":
        result = await client.wait_command(result["id"], 120)
    assert status == 200 and result["command_status"] == "SUCCEEDED", result
    archive = base64.b64decode(result["command_result"]["system_logs"])
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        texts = {}
        for name in names:
            member = tar.extractfile(name)
            assert member is not None, name
            texts[name] = member.read().decode(errors="replace")
    return texts


@dataclass(frozen=True)
class AgentFacts:
    rss_kib: int
    journal_lines: int  # the agent's, so far
    listen_overflows: int  # connects the guest's kernel dropped: accept queue full
    anon_kib: int  # of rss_kib: the heap and other anonymous pages
    file_kib: int  # ... library and other file pages (in the ramdisk: shared memory)
    peak_kib: int  # the agent's highest RSS so far (VmHWM)


async def agent_facts(client: AgentClient) -> AgentFacts:
    """The agent's RSS, its journal lines and the kernel's accept-queue drops, from one
    log bundle (ps.txt is taken before the bundle reads anything)."""
    texts = await log_bundle(client, "ps.txt", "agent-memory.txt", "journal.txt", "nstat.txt")
    rss = [
        int(line.split()[4])
        for line in texts["ps.txt"].splitlines()[1:]
        if "tacet-agent" in line and "python" in line
    ]
    assert len(rss) == 1, texts["ps.txt"]
    lines = sum(1 for line in texts["journal.txt"].splitlines() if " tacet-agent[" in line)
    counters = dict(line.split()[:2] for line in texts["nstat.txt"].splitlines()[1:] if line)
    assert "TcpExtListenOverflows" in counters, texts["nstat.txt"]
    memory = {
        key: int(value.split()[0])
        for key, value in (line.split(":", 1) for line in texts["agent-memory.txt"].splitlines())
    }
    return AgentFacts(
        rss[0],
        lines,
        int(counters["TcpExtListenOverflows"]),
        memory["RssAnon"],
        memory["RssFile"] + memory["RssShmem"],  # the ramdisk's files are in tmpfs
        memory["VmHWM"],
    )


def report_memory(label: str, before: AgentFacts, after: AgentFacts) -> None:
    report(f"{label}: agent RSS before/after", f"{before.rss_kib}/{after.rss_kib} KiB")
    report(
        f"{label}: agent RSS anonymous / file-backed before, after; peak",
        f"{before.anon_kib} / {before.file_kib}, {after.anon_kib} / {after.file_kib};"
        f" {after.peak_kib} KiB",
    )


async def agent_baseline(client: AgentClient) -> AgentFacts:
    """``agent_facts`` once the log bundle itself has run once: what the first bundle
    loads and leaves (tarfile and its compressors) is not counted against a storm."""
    await agent_facts(client)
    return await agent_facts(client)


async def storm_client(port: int, slow: bool, stop: asyncio.Event, opened: list[int]) -> None:
    """Connect and hold the connection idle (or send a byte every 2 s: slowloris); when
    the agent closes it, connect again."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        opened[0] += 1
        try:
            while not stop.is_set():
                if slow:
                    writer.write(b"\x16")
                    await writer.drain()
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1024), 2.0) == b"":
                        break  # closed by the agent (or QEMU's forward)
        except OSError:
            pass
        finally:
            writer.close()
        await asyncio.sleep(0.5)


async def test_connection_storm_in_the_guest(passive: Passive):
    """300 idle and 20 slowloris connections through QEMU's forward while the conductor
    polls /v1/status at 1 Hz. QEMU's user networking makes every connection come from
    one address (10.0.2.2), the conductor's included, so this exercises the per-peer cap
    and its eviction of unsettled connections under the ramdisk's real limits
    (LimitNOFILE, the default caps).

    The conductor polls as Tacet's does, over one kept-alive connection: once it sent a
    request the agent never closes it to make room, and every poll is answered within
    1 s. Polls on a new connection each are reported, and must get through: behind the
    storm's own address a new connection competes with the storm's for the address's
    slots, and under emulation it can wait for TCP's 1 s retransmission (the guest's
    accept queue overflowing with the storm's bursts) or lose its slot mid-handshake."""
    client, port = passive.client, passive.client.port
    before = await agent_baseline(client)
    stop, opened = asyncio.Event(), [0]
    async with StormConductor(client) as conductor:
        assert await conductor.kept_alive() == 200
        storm = [
            asyncio.create_task(storm_client(port, slow=i < 20, stop=stop, opened=opened))
            for i in range(320)
        ]
        try:
            await asyncio.sleep(3)  # let the storm fill the agent's slots first
            kept, fresh = await conductor.both(20)
        finally:
            stop.set()
            await asyncio.gather(*storm, return_exceptions=True)
        made = list(conductor.made)
    report("storm in the guest: connections opened", str(opened[0]))
    report("storm in the guest: kept-alive conductor polls", summary(kept))
    report("storm in the guest: new-connection polls", summary(fresh))
    await asyncio.sleep(30)
    after = await agent_facts(client)
    report_memory("storm in the guest", before, after)
    report("storm in the guest: agent log lines", str(after.journal_lines - before.journal_lines))
    overflows = after.listen_overflows - before.listen_overflows
    report("storm in the guest: connects dropped, accept queue full", str(overflows))
    assert opened[0] > 320, opened  # the agent closed connections and they came back
    assert max(kept) < 1.0, kept
    assert len(made) == 1, made  # the kept-alive connection was never closed to make room
    assert any(latency < math.inf for latency in fresh), fresh  # new ones get their turn
    assert after.rss_kib - before.rss_kib < 20 * 1024, (before, after)
    assert after.journal_lines - before.journal_lines < 100, (before, after)


# --- the TLS policy as a scanner sees it, in the guest --------------------------------


async def guest_accepts(port: int, pki_dir: Path, suite: str | None) -> str | None:
    """The suite negotiated with the agent in the guest when the client offers only
    ``suite`` over TLS 1.2 (None: TLS 1.3 with its defaults); None if refused. The
    client presents the conductor's certificate, so a refusal is the suite's alone."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=pki_dir / "ca" / "ca.pem")
    clients = pki_dir / "ca" / "clients"
    context.load_cert_chain(clients / "conductor.pem", clients / "conductor-key.pem")
    if suite is None:
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.set_ciphers(f"{suite}:@SECLEVEL=0")
        except ssl.SSLError:
            return None  # this OpenSSL cannot offer it at all
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=NODE), 30
        )
    except (ssl.SSLError, ConnectionError):
        return None
    cipher = writer.get_extra_info("cipher")
    writer.close()
    return str(cipher[0])


async def test_tls_scan_of_the_agent_in_the_guest(passive: Passive, pki_dir: Path):
    """The ramdisk's Python and OpenSSL accept exactly the documented TLS 1.2 suites for
    its EC certificate (docs/protocol.md#tls), and TLS 1.3 with one of its AEAD suites."""
    port = passive.client.port
    accepted = set()
    for suite in every_tls12_suite():
        negotiated = await guest_accepts(port, pki_dir, suite)
        if negotiated is not None:
            assert negotiated == suite
            accepted.add(negotiated)
    report("TLS scan in the guest: TLS 1.2 suites accepted", ", ".join(sorted(accepted)))
    assert accepted == ECDSA_SUITES
    assert await guest_accepts(port, pki_dir, None) in TLS13_CIPHERS
    status, body = await passive.client.get_json("/v1/status")  # still serving
    assert status == 200, body


async def test_passive_provisioning(passive: Passive, tmp_path: Path):
    client, vm, image = passive.client, passive.vm, passive.image
    # Inventory: the hardware this harness gave the VM.
    status, result = await client.command("poll.get_hardware_info")
    assert status == 200 and result["command_status"] == "SUCCEEDED", result
    inventory = result["command_result"]
    assert VIRTIO.mac in [i["mac_address"] for i in inventory["interfaces"]]
    disks = {d["serial"]: d for d in inventory["disks"]}
    assert VIRTIO.disk_serial in disks, inventory["disks"]
    assert disks[VIRTIO.disk_serial]["size"] == VIRTIO.disk_bytes
    assert inventory["system_vendor"]["serial_number"] == VIRTIO.system_serial
    assert inventory["system_vendor"]["uuid"] == VIRTIO.uuid
    # The lookup data a conductor hands over in passive mode.
    node_info = {
        "node": {
            "uuid": "e2e00000-0000-4000-8000-000000000001",
            "properties": {"root_device": {"serial": VIRTIO.disk_serial}},
            "instance_info": {},
        },
        "config": {},
    }
    status, result = await client.command("poll.set_node_info", {"node_info": node_info})
    assert status == 200 and result["command_status"] == "SUCCEEDED", result
    # The operator's log bundle: iproute2 runs (its wrapper gives it the libbpf that the
    # image keeps out of systemd's way) and shows the VM's NIC.
    ip_addr = (await log_bundle(client, "ip-addr.txt"))["ip-addr.txt"]
    assert VIRTIO.mac.lower() in ip_addr and "--- stderr ---" not in ip_addr, ip_addr
    # Write the image, downloaded from the host through guestfwd.
    image_info = {
        "id": "e2e-image",
        "urls": [f"http://{IMAGE_HOST}/image.raw"],
        "disk_format": "raw",
        "os_hash_algo": "sha256",
        "os_hash_value": image.sha256,
    }
    started = time.monotonic()
    status, result = await client.command("standby.prepare_image", {"image_info": image_info})
    assert status == 200, result
    if result["command_status"] == "RUNNING":
        result = await client.wait_command(result["id"], 600)
    seconds = time.monotonic() - started
    assert result["command_status"] == "SUCCEEDED", result
    size = image.path.stat().st_size
    report(
        "image write (64 MiB raw, guestfwd HTTP)",
        f"{seconds:.1f} s, {size / seconds / 1024 / 1024:.1f} MiB/s",
    )
    assert passive.images.requests and all(
        r == ("GET", "/image.raw") for r in passive.images.requests
    ), passive.images.requests
    status, result = await client.command("standby.get_partition_uuids")
    assert status == 200 and result["command_status"] == "SUCCEEDED", result
    uuids = result["command_result"]
    assert uuids["root uuid"], uuids
    # Power off: QEMU exits (-no-reboot) once the guest is down.
    status, result = await client.command("standby.power_off")
    assert status == 200, result
    vm.wait_exit(120)
    # The disk now holds the image: the partition and the file written into it.
    head = vm.disk.read_bytes()[:512] if vm.disk.stat().st_size < 4096 else _head(vm.disk)
    parts = mbr_partitions(head)
    assert parts == [(0x83, image.partition_start // 512, image.partition_bytes // 512)], parts
    text = read_file_from_ext4(
        vm.disk, image.partition_start, image.partition_bytes, image.marker_name, tmp_path
    )
    assert text == image.marker_text
    # The guest opened no connection except the image download (DHCP aside).
    flows = guest_flows(vm.pcap, VIRTIO.mac)
    tcp = {(f.dst, f.dport) for f in flows if f.proto == "tcp"}
    udp = {(f.dst, f.dport) for f in flows if f.proto == "udp"}
    # iPXE's own HTTP fetches aside (exactly the boot files, each once): the boot server
    # would also have seen any request the agent sent it.
    assert tcp <= {(IMAGE_HOST, 80), (BOOT_HOST, 80)} and (IMAGE_HOST, 80) in tcp, tcp
    assert sorted(path for _, path in vm.boot_requests) == ["/initramfs", "/kernel", "/node.cpio"]
    # DHCP (iPXE, then systemd-networkd; DHCPv6 to its multicast group) and iPXE's TFTP.
    allowed_udp = {("255.255.255.255", 67), ("10.0.2.2", 67), ("10.0.2.2", 69), ("ff02::1:2", 547)}
    assert udp <= allowed_udp, udp
    console = vm.console_text()
    assert "lookup:" not in console and "heartbeat:" not in console


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(512)


# --- scenario 2: active mode against a fake ironic ------------------------------------


async def test_active_mode_lookup_heartbeat_and_token(
    ramdisk: Ramdisk, tmp_path_factory: pytest.TempPathFactory
):
    workdir = tmp_path_factory.mktemp("active")
    fake = FakeIronic()
    with BackgroundApp(fake.app) as ironic:
        vm = VM(
            workdir, ramdisk, VIRTIO, kernel_args=f"ipa-api-url=http://{IRONIC_HOST}:{IRONIC_PORT}"
        )
        vm.guestfwds[(IRONIC_HOST, IRONIC_PORT)] = ironic.port
        # No per-node initrd: the agent's own certificate, checked against the heartbeat's.
        insecure_first = ssl.create_default_context()
        insecure_first.check_hostname = False
        insecure_first.verify_mode = ssl.CERT_NONE
        try:
            booted = await asyncio.get_running_loop().run_in_executor(
                None, boot, vm, lambda port: AgentClient(port, insecure_first)
            )
            deadline = time.monotonic() + 120
            while not fake.heartbeats and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert fake.heartbeats, f"no heartbeat; console tail:\n{vm.tail()}"
            lookup = fake.lookups[0]
            assert VIRTIO.mac in lookup.query["addresses"].split(",")
            beat = fake.heartbeats[0]
            assert beat["callback_url"] == f"https://{GUEST_IP}:{AGENT_PORT}"
            assert beat["agent_token"] == LOOKUP_TOKEN
            # From now on, trust exactly the certificate the heartbeat carried (ironic's way).
            pinned = client_context(cadata=beat["agent_verify_ca"])
            pinned.check_hostname = False
            agent = AgentClient(booted.client.port, pinned)
            status, body, _ = await agent.get("/v1/status")
            assert status == 200 and body["mode"] == "active"
            assert body["node_uuid"] == NODE_UUID
            # A wrong token is refused; the lookup's token works (after any hold-off).
            agent.token = "not-the-token"
            status, _ = await agent.command("standby.sync")
            assert status == 401
            agent.token = LOOKUP_TOKEN
            deadline = time.monotonic() + 60
            while True:
                status, result = await agent.command("standby.sync")
                if status != 429 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(2)
            assert status == 200 and result["command_status"] == "SUCCEEDED", result
        finally:
            vm.stop()
    assert "mode=active" in vm.console_text()


# --- scenario 4: other hardware shapes -----------------------------------------------

SHAPES = [
    Shape(
        "e1000-ahci",
        nic="e1000",
        mac="52:54:00:7a:e2:11",
        disk="ahci",
        disk_serial="TCE2ESATA01",
        system_serial="SYS-E2E-SATA",
        uuid="7ac0e2e0-7ac0-4ac0-8ac0-7ac0000000e2",
    ),
    Shape(
        "nvme",
        machine="q35",
        mac="52:54:00:7a:e2:21",
        disk="nvme",
        disk_serial="TCE2ENVME01",
        system_serial="SYS-E2E-NVME",
        uuid="7ac0e2e0-7ac0-4ac0-8ac0-7ac0000000e3",
    ),
]


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
async def test_hardware_shapes(
    shape: Shape,
    ramdisk: Ramdisk,
    pki_dir: Path,
    bundle: pki.NodeBundle,
    tmp_path_factory: pytest.TempPathFactory,
):
    workdir = tmp_path_factory.mktemp(shape.name)
    vm = VM(workdir, ramdisk, shape, secrets=bundle.initrd())
    try:
        booted = await asyncio.get_running_loop().run_in_executor(
            None, boot_for_conductor, vm, pki_dir
        )
        status, result = await booted.client.command("poll.get_hardware_info")
    finally:
        vm.stop()
    assert status == 200 and result["command_status"] == "SUCCEEDED", result
    inventory = result["command_result"]
    nics = {i["mac_address"]: i for i in inventory["interfaces"]}
    assert shape.mac in nics, inventory["interfaces"]
    disks = {d["serial"]: d for d in inventory["disks"]}
    assert shape.disk_serial in disks, inventory["disks"]
    disk = disks[shape.disk_serial]
    assert disk["size"] == shape.disk_bytes
    expected_name = "/dev/nvme0n1" if shape.disk == "nvme" else "/dev/sda"
    assert disk["name"] == expected_name
    assert inventory["system_vendor"]["serial_number"] == shape.system_serial
    expected_driver = {"e1000": "e1000", "virtio-net-pci": "virtio_net"}[shape.nic]
    assert nics[shape.mac].get("driver") == expected_driver


def test_harness_fails_loudly_without_a_ramdisk(monkeypatch, tmp_path):
    monkeypatch.setenv("TACET_RAMDISK", str(tmp_path / "missing"))
    with pytest.raises(HarnessError, match="build the ramdisk first"):
        Ramdisk.locate()


# --- UEFI: the node's bundle after a ramdisk of any length ---------------------------------
OVMF_PASSIVE = Shape(
    "ovmf-passive",
    machine="q35",
    mac="52:54:00:7a:e2:61",
    disk_serial="TCE2EOVMF01",
    system_serial="SYS-E2E-OVMF",
    uuid="7ac0e2e0-7ac0-4ac0-8ac0-7ac0000000e6",
)


async def test_uefi_boot_finds_the_bundle_after_an_unaligned_ramdisk(
    ramdisk: Ramdisk,
    pki_dir: Path,
    bundle: pki.NodeBundle,
    tmp_path_factory: pytest.TempPathFactory,
):
    """Under OVMF, iPXE has the kernel's EFI stub load the ramdisk and the node's bundle
    back to back with no padding, so the bundle starts wherever the ramdisk's length
    ends. The kernel reads an uncompressed cpio only at a 4-byte aligned offset; the
    bundle is gzip-compressed so that it is found at any. The ramdisk is given a length
    of 1 mod 4 here (zero bytes after its zstd frame, which the kernel skips), so that
    the test does not depend on the length a build happens to have.
    """
    workdir = tmp_path_factory.mktemp(OVMF_PASSIVE.name)
    initramfs = workdir / "unaligned.initramfs"
    data = ramdisk.initramfs.read_bytes()
    initramfs.write_bytes(data + bytes((1 - len(data)) % 4))
    assert initramfs.stat().st_size % 4 == 1
    unaligned = Ramdisk(ramdisk.kernel, initramfs, ramdisk.build)
    vm = UefiVM(workdir, unaligned, OVMF_PASSIVE, secrets=bundle.initrd())
    try:
        booted = await asyncio.get_running_loop().run_in_executor(
            None, boot_for_conductor, vm, pki_dir
        )
        status, body, der = await booted.client.get("/v1/status")
    finally:
        vm.stop()
    assert status == 200
    # The per-node certificate (it verified for the node's name against the CA) and the
    # bundle's token: the bundle was unpacked.
    assert fingerprint(der) == bundle.fingerprint
    assert binding_ok(body["binding"], der, bundle.token)
    assert "Initramfs unpacking failed" not in vm.console_text()
