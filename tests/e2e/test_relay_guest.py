"""The ramdisk's own network configuration in a booted guest: static IPv4 and IPv6, SLAAC,
a tagged VLAN and bonds, each from the node bundle's ``network_data.json`` through
``tacet-network``, as an operator gives it (``tacet pki node-bundle --network-data``).

The host end of these links is ``relay.py`` (the kernel the tests run on may have
neither 8021q nor bonding), a userspace relay between the guest's extra NICs and a TAP
device in the test's network namespace; no DHCP server and no router answer there
unless a test starts one. The guest's first NIC stays on QEMU's user network, where iPXE
loads the ramdisk; each test says what the ramdisk does with that NIC. The agent is
reached from inside the namespace, at the address the test configured, and the relay's
counters show how the guest's frames came (tag, member, ethertype).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conductor import pki

from .conftest import NODE
from .harness import (
    AGENT_PORT,
    VM,
    DiskImage,
    HarnessError,
    Ramdisk,
    build_image,
    read_file_from_ext4,
    report,
)
from .netns import Namespace, require_namespace_tools
from .qmp import qmp_args, set_link
from .relay import ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Event, Relay
from .test_ramdisk import VIRTIO, boot_for_conductor

pytestmark = pytest.mark.e2e

WIRE = ipaddress.IPv4Network("192.0.2.0/24")
HOST_IP = "192.0.2.1"
GUEST_IP = "192.0.2.10"
WIRE6 = ipaddress.IPv6Network("2001:db8:10::/64")
HOST6 = "2001:db8:10::1"
GUEST6 = "2001:db8:10::10"
TAP = "wire0"
VID = 100
MACS = ["52:54:00:7a:e2:11", "52:54:00:7a:e2:12"]
IMAGE_PORT = 8080


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    try:
        require_namespace_tools()
    except AssertionError as exc:
        pytest.fail(str(exc), pytrace=False)
    with Namespace(f"tacet-relay-{uuid.uuid4().hex[:8]}") as ns:
        ns.add_tap(TAP, WIRE, [HOST_IP])
        yield ns


def phy(link_id: str, mac: str) -> dict[str, Any]:
    return {"id": link_id, "type": "phy", "ethernet_mac_address": mac}


def static(
    link_id: str, address: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> dict[str, Any]:
    kind = "ipv4" if network.version == 4 else "ipv6"
    return {
        "id": f"{link_id}-{kind}",
        "type": kind,
        "link": link_id,
        "ip_address": address,
        "netmask": str(network.netmask),
    }


def network_data(links: list[dict[str, Any]], networks: list[dict[str, Any]]) -> bytes:
    return json.dumps({"links": links, "networks": networks, "services": []}).encode()


# The first NIC (QEMU's user network, where iPXE loaded the ramdisk). Named with no
# network it stays without an address of any family, so the guest has none but the
# configured ones; with MGMT_DHCP it asks QEMU's DHCP, and the harness reaches the agent
# through QEMU's forward to tell when it has booted.
MGMT = phy("mgmt", VIRTIO.mac)
MGMT_DHCP = {"id": "mgmt-dhcp", "type": "ipv4_dhcp", "link": "mgmt"}


def node_bundle(
    pki_dir: Path, data: bytes | None = None, ips: tuple[str, ...] = ()
) -> pki.NodeBundle:
    """The node's bundle, with its network_data.json when given, its certificate naming
    ``ips``."""
    return pki.node_bundle(pki_dir / "ca", NODE, ips=ips, network_data=data)


def boot_on(
    relay: Relay,
    bundle: pki.NodeBundle,
    workdir: Path,
    ramdisk: Ramdisk,
    pki_dir: Path,
    extra_args: tuple[str, ...] = (),
    kernel_args: str = "",
) -> VM:
    vm = VM(
        workdir,
        ramdisk,
        VIRTIO,
        kernel_args=kernel_args,
        secrets=bundle.initrd(),
        extra_args=[*relay.qemu_args(MACS[: len(relay.members)]), *extra_args],
    )
    boot_for_conductor(vm, pki_dir)
    return vm


def tacet_in(ns: Namespace, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """The ``tacet`` command line run inside the namespace: the conductor's side of the wire."""
    command = [str(Path(sys.executable).parent / "tacet"), *args]
    return subprocess.run(
        ns.command(*command), capture_output=True, text=True, timeout=timeout, check=False
    )


def reached(
    namespace: Namespace, pki_dir: Path, vm: VM, *command: str
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Seconds until the agent listens at GUEST_IP, seen from the namespace, then ``tacet
    COMMAND ...`` run there against it (our CA, our client certificate); the guest is
    stopped either way."""
    try:
        seconds = namespace.wait_for_listener(GUEST_IP, AGENT_PORT, 120)
        done = tacet_in(
            namespace, *command, "--retries", "0", *conductor_trust(pki_dir), timeout=120
        )
    finally:
        vm.stop()
    return seconds, done


def test_network_data_puts_the_agent_on_a_tagged_vlan(
    ramdisk: Ramdisk, pki_dir: Path, tmp_path: Path, namespace: Namespace
) -> None:
    """Static IPv4 on VLAN 100 over a relay NIC, no DHCP server on that link. The
    inventory reports what was configured."""
    data = network_data(
        [
            MGMT,
            phy("lan1", MACS[0]),
            {"id": f"vlan{VID}", "type": "vlan", "vlan_link": "lan1", "vlan_id": VID},
        ],
        [MGMT_DHCP, static(f"vlan{VID}", GUEST_IP, WIRE)],
    )
    bundle = node_bundle(pki_dir, data, (GUEST_IP,))
    with Relay(namespace.open_tap(TAP), members=("lan1",), vlan=VID) as relay:
        vm = boot_on(relay, bundle, tmp_path, ramdisk, pki_dir)
        seconds, done = reached(namespace, pki_dir, vm, "inventory", GUEST_IP, "--json")
        counts = relay.counters
    report("VLAN: agent reachable over the tagged link", f"{seconds:.1f} s after its first answer")
    report("VLAN: relay counters", str(counts.snapshot()))
    assert relay.error is None
    assert counts.get(Event.ACCEPTED, ethertype=ETH_P_ARP) > 0
    assert counts.get(Event.ACCEPTED, ethertype=ETH_P_IP) > 0
    assert counts.get(Event.SENT, ethertype=ETH_P_IP) > 0
    # nothing left the guest untagged or in another VLAN
    assert counts.get(Event.UNTAGGED) == 0
    assert counts.get(Event.WRONG_VID) == 0
    assert counts.get(Event.QINQ) == 0
    assert done.returncode == 0, done.stderr
    interfaces = json.loads(done.stdout)["interfaces"]
    vlans = [i for i in interfaces if i.get("vlan_id") == VID]
    assert len(vlans) == 1, interfaces
    assert vlans[0]["vlan_parent"] and vlans[0]["kind"] == "vlan", vlans[0]
    assert f"{GUEST_IP}/{WIRE.prefixlen}" in addresses_of(vlans[0]), vlans[0]


def test_kernel_command_line_puts_the_agent_on_a_tagged_vlan(
    ramdisk: Ramdisk, pki_dir: Path, tmp_path: Path, namespace: Namespace
) -> None:
    """dracut's syntax for a PXE setup, no network_data.json: ``ifname=`` names the relay
    NIC by its MAC, ``vlan=`` puts VLAN 100 on it, ``ip=`` a static address on the VLAN.
    Other NICs keep DHCP. systemd-network-generator leaves the parent NIC its IPv6
    link-local address, so untagged IPv6 (neighbour discovery) is allowed here; untagged
    IPv4 and ARP are not."""
    bundle = node_bundle(pki_dir, ips=(GUEST_IP,))
    args = (
        f"ifname=lan1:{MACS[0]} vlan=vlan{VID}:lan1 ip={GUEST_IP}:::{WIRE.netmask}::vlan{VID}:none"
    )
    with Relay(namespace.open_tap(TAP), members=("lan1",), vlan=VID) as relay:
        vm = boot_on(relay, bundle, tmp_path, ramdisk, pki_dir, kernel_args=args)
        seconds, done = reached(namespace, pki_dir, vm, "status", GUEST_IP)
        counts = relay.counters
    report("cmdline VLAN: agent reachable", f"{seconds:.1f} s after its first answer")
    report("cmdline VLAN: relay counters", str(counts.snapshot()))
    assert "tacet-network: network from the kernel command line: ifname=lan1:" in vm.console_text()
    assert done.returncode == 0, done.stderr
    assert relay.error is None
    assert counts.get(Event.ACCEPTED, ethertype=ETH_P_IP) > 0
    assert counts.get(Event.UNTAGGED, ethertype=ETH_P_IP) == 0
    assert counts.get(Event.UNTAGGED, ethertype=ETH_P_ARP) == 0
    assert counts.get(Event.WRONG_VID) == 0


def config_drive(workdir: Path, data: bytes) -> Path:
    """An ISO 9660 config drive labelled ``config-2`` holding ``network_data.json``, as
    ironic builds it for a virtual media boot."""
    tree = workdir / "config-drive" / "openstack" / "latest"
    tree.mkdir(parents=True)
    (tree / "network_data.json").write_bytes(data)
    (tree / "meta_data.json").write_text(json.dumps({"uuid": VIRTIO.uuid, "name": NODE}))
    image, tree_root = workdir / "config-drive.iso", workdir / "config-drive"
    options = ["-quiet", "-o", str(image), "-V", "config-2", "-r", "-J"]
    subprocess.run(["genisoimage", *options, str(tree_root)], check=True)
    return image


def test_config_drive_network_data_on_virtual_media(
    ramdisk: Ramdisk, pki_dir: Path, tmp_path: Path, namespace: Namespace
) -> None:
    """ironic's DHCP-less flow: no network_data.json in the bundle; it is on a CD-ROM
    labelled ``config-2``, and the kernel command line says ``boot_method=vmedia``, as
    ironic's virtual media boot does. Static IPv4 on the relay NIC, DHCP on the first."""
    if shutil.which("genisoimage") is None:
        raise HarnessError("the config drive test needs genisoimage: run tools/setup")
    data = network_data([MGMT, phy("lan1", MACS[0])], [MGMT_DHCP, static("lan1", GUEST_IP, WIRE)])
    drive = config_drive(tmp_path, data)
    bundle = node_bundle(pki_dir, ips=(GUEST_IP,))
    cdrom = ("-drive", f"file={drive},format=raw,media=cdrom,if=ide,index=2,readonly=on")
    with Relay(namespace.open_tap(TAP), members=("lan1",)) as relay:
        vm = boot_on(relay, bundle, tmp_path, ramdisk, pki_dir, cdrom, "boot_method=vmedia")
        seconds, done = reached(namespace, pki_dir, vm, "status", GUEST_IP)
        counts = relay.counters
    report("config drive: agent reachable", f"{seconds:.1f} s after its first answer")
    console = vm.console_text()
    assert "network from network_data.json in the config drive" in console, vm.tail(60)
    assert done.returncode == 0, done.stderr
    assert relay.error is None
    assert counts.get(Event.ACCEPTED, ethertype=ETH_P_IP) > 0


def conductor_trust(pki_dir: Path) -> list[str]:
    """Our CA (the agent's IP SAN checked) and the conductor's client certificate."""
    clients = pki_dir / "ca" / "clients"
    return [
        "--cafile",
        str(pki_dir / "ca" / "ca.pem"),
        "--cert",
        str(clients / "conductor.pem"),
        "--key",
        str(clients / "conductor-key.pem"),
    ]


def addresses_of(interface: dict[str, Any]) -> list[str]:
    """An inventory interface's addresses as ADDRESS/PREFIX."""
    return [f"{a['address']}/{a['prefix']}" for a in interface.get("ip_addresses") or []]


def bond_data(mode: dict[str, Any]) -> bytes:
    bond = {"id": "bond0", "type": "bond", "bond_links": ["lan1", "lan2"], **mode}
    return network_data(
        [MGMT, phy("lan1", MACS[0]), phy("lan2", MACS[1]), bond],
        [MGMT_DHCP, static("bond0", GUEST_IP, WIRE)],
    )


def test_agent_reached_over_an_lacp_bond(
    ramdisk: Ramdisk, pki_dir: Path, tmp_path: Path, namespace: Namespace
) -> None:
    data = bond_data(
        {
            "bond_mode": "802.3ad",
            "bond_lacp_rate": "fast",
            "bond_miimon": 100,
            "bond_xmit_hash_policy": "layer3+4",
        }
    )
    members = ("lan1", "lan2")
    with Relay(namespace.open_tap(TAP), members=members, lacp=True) as relay:
        vm = boot_on(relay, node_bundle(pki_dir, data), tmp_path, ramdisk, pki_dir)
        try:
            seconds = namespace.wait_for_listener(GUEST_IP, AGENT_PORT, 120)
            # The bond passes traffic before the LACP exchange has settled (a PDU a second
            # each way at the fast rate): give it until both members report in service.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(map(relay.lacp_in_service, members)):
                time.sleep(0.5)
            settled = time.monotonic() - deadline + 30
        finally:
            vm.stop()
        counts = relay.counters
        report("bond: agent reachable over the bond", f"{seconds:.1f} s after its first answer")
        report("bond: both members in service", f"{settled:.1f} s later")
        report("bond: relay counters", str(counts.snapshot()))
        for member in members:
            frame = relay.switch.last_lacpdu_frame(member)
            report(f"bond: the guest's last LACPDU on {member}", frame.hex() if frame else "none")
        assert relay.error is None
        for member in members:
            assert counts.get(Event.LACPDU, member=member) > 0
            assert counts.get(Event.LACPDU_SENT, member=member) > 0
            # the guest's bond aggregates this member with us: in sync, collecting,
            # distributing
            assert relay.lacp_in_service(member), relay.switch.last_lacpdu(member)
        assert counts.get(Event.ACCEPTED, ethertype=ETH_P_IP) > 0
        assert counts.get(Event.UNEXPECTED_TAG) == 0
        report(
            "bond: IPv4 frames from the guest per member",
            ", ".join(f"{m} {counts.get(Event.ACCEPTED, m, ETH_P_IP)}" for m in members),
        )


# The same active-backup bond from the kernel command line, in dracut's syntax: the
# generator drops bond=''s options, tacet-network puts them back (the mode among them).
BOND_CMDLINE = (
    f"ifname=lan1:{MACS[0]} ifname=lan2:{MACS[1]}"
    " bond=bond0:lan1,lan2:mode=active-backup,miimon=100"
    f" ip={GUEST_IP}:::{WIRE.netmask}::bond0:none"
)


@pytest.mark.parametrize("source", ["network_data", "cmdline"])
def test_active_backup_bond_fails_over_when_the_active_member_loses_its_link(
    ramdisk: Ramdisk, pki_dir: Path, tmp_path: Path, namespace: Namespace, source: str
) -> None:
    if source == "network_data":
        data = bond_data({"bond_mode": "active-backup", "bond_miimon": 100})
        bundle, kernel_args = node_bundle(pki_dir, data), ""
    else:
        bundle, kernel_args = node_bundle(pki_dir), BOND_CMDLINE
    members = ("lan1", "lan2")
    monitor = tmp_path / "qmp.sock"
    with Relay(namespace.open_tap(TAP), members=members) as relay:
        vm = boot_on(
            relay, bundle, tmp_path, ramdisk, pki_dir, tuple(qmp_args(monitor)), kernel_args
        )
        try:
            namespace.wait_for_listener(GUEST_IP, AGENT_PORT, 120)
            active = relay.switch.active_member()
            assert active in members
            other = members[1 - members.index(active)]
            before = relay.counters.get(Event.ACCEPTED, member=other)
            # active-backup, not the bonding driver's default round robin: the guest has
            # sent IPv4 on one member only
            assert relay.counters.get(Event.ACCEPTED, other, ETH_P_IP) == 0, relay.counters
            # The member's link dies: the relay drops its frames both ways, and QEMU
            # takes the NIC's carrier away, which the bond's MII monitor sees.
            relay.fail(active)
            set_link(monitor, active, up=False)
            seconds = namespace.wait_for_listener(GUEST_IP, AGENT_PORT, 60)
        finally:
            vm.stop()
        counts = relay.counters
        report("active-backup: agent reachable again after the failover", f"{seconds:.1f} s")
        report("active-backup: relay counters", str(counts.snapshot()))
        assert relay.error is None
        assert relay.switch.active_member() == other
        assert counts.get(Event.ACCEPTED, member=other) > before
        assert counts.get(Event.SLOW_PROTOCOL) == 0  # no LACP in this mode


def serve_image(ns: Namespace, host: str, workdir: Path) -> DiskImage:
    """A test image served over HTTP from ``host`` inside the namespace (its access log in
    ``workdir/images.log``)."""
    image = build_image(workdir / "image")
    served = workdir / "served"
    served.mkdir()
    image = dataclasses.replace(image, path=image.path.rename(served / "image.raw"))
    ns.start(
        sys.executable,
        "-m",
        "http.server",
        str(IMAGE_PORT),
        "--bind",
        host,
        "--directory",
        str(served),
        log=workdir / "images.log",
    )
    ns.wait_for_listener(host, IMAGE_PORT, 30)
    return image


def fleet_file(
    workdir: Path, pki_dir: Path, bundle: pki.NodeBundle, address: str, url: str, image: DiskImage
) -> Path:
    """A one-node fleet for ``tacet provision``: our CA checks the agent's IP SAN, the
    conductor's client certificate, the node's token and identity, the image, power off."""
    clients = pki_dir / "ca" / "clients"
    fleet = workdir / "fleet.toml"
    fleet.write_text(
        "wait_interval = 2\nwait_deadline = 300\nretries = 1\n\n[defaults]\n"
        f"cafile = {json.dumps(str(pki_dir / 'ca' / 'ca.pem'))}\n"
        f"cert = {json.dumps(str(clients / 'conductor.pem'))}\n"
        f"key = {json.dumps(str(clients / 'conductor-key.pem'))}\n"
        f'image = {{ url = "{url}", checksum = "sha256:{image.sha256}" }}\n'
        'finish = "power_off"\n\n[[nodes]]\n'
        f'name = "{NODE}"\naddress = "{address}"\ntoken = "{bundle.token}"\n'
        f'macs = ["{MACS[0]}"]\nserial = "{VIRTIO.system_serial}"\n'
        f'disk_serials = ["{VIRTIO.disk_serial}"]\n'
        f'root_device = {{ serial = "{VIRTIO.disk_serial}" }}\n'
    )
    return fleet


def provision(ns: Namespace, fleet: Path, vm: VM, label: str) -> None:
    """``tacet provision`` in the namespace; the node done, powered off, its disk written."""
    done = tacet_in(ns, "provision", str(fleet), "--plain", timeout=600)
    report(f"{label}: tacet provision", (done.stdout + done.stderr).strip().splitlines()[-1])
    results = json.loads(fleet.with_suffix(".results.json").read_text())["nodes"][NODE]
    assert done.returncode == 0 and results["state"] == "done", (done.stdout, done.stderr, results)
    vm.wait_exit(120)


def assert_image_written(vm: VM, image: DiskImage, workdir: Path) -> None:
    assert "GET /image.raw" in (workdir / "images.log").read_text()
    text = read_file_from_ext4(
        vm.disk, image.partition_start, image.partition_bytes, image.marker_name, workdir
    )
    assert text == image.marker_text
    with vm.disk.open("rb") as disk:
        written = disk.read(image.path.stat().st_size)
    assert hashlib.sha256(written).hexdigest() == image.sha256


def test_static_ipv4_without_dhcp_provisioned_by_tacet_provision(
    ramdisk: Ramdisk, pki_dir: Path, tmp_path: Path, namespace: Namespace
) -> None:
    """The guest's only address is the static one on its relay NIC, where nothing answers
    DHCP; ``tacet provision``, run in the namespace, finds the agent there by address
    (its certificate's IP SAN checked against our CA), writes an image served from the
    namespace, and powers the node off."""
    data = network_data([MGMT, phy("lan1", MACS[0])], [static("lan1", GUEST_IP, WIRE)])
    bundle = node_bundle(pki_dir, data, (GUEST_IP,))
    image = serve_image(namespace, HOST_IP, tmp_path)
    url = f"http://{HOST_IP}:{IMAGE_PORT}/image.raw"
    fleet = fleet_file(tmp_path, pki_dir, bundle, GUEST_IP, url, image)
    with Relay(namespace.open_tap(TAP), members=("lan1",)) as relay:
        vm = VM(
            tmp_path, ramdisk, VIRTIO, secrets=bundle.initrd(), extra_args=relay.qemu_args(MACS[:1])
        )
        vm.start()
        try:
            provision(namespace, fleet, vm, "static IPv4")
        finally:
            vm.stop()
        counts = relay.counters
    report("static IPv4: relay counters", str(counts.snapshot()))
    assert relay.error is None
    assert counts.get(Event.ACCEPTED, ethertype=ETH_P_IP) > 0
    assert counts.get(Event.UNEXPECTED_TAG) == 0
    assert_image_written(vm, image, tmp_path)


def eui64(network: ipaddress.IPv6Network, mac: str) -> str:
    """The address SLAAC forms from a prefix and a MAC address (RFC 4291, appendix A)."""
    octets = bytearray(bytes.fromhex(mac.replace(":", "")))
    octets[0] ^= 0x02
    interface_id = bytes(octets[:3]) + b"\xff\xfe" + bytes(octets[3:])
    return str(network[int.from_bytes(interface_id, "big")])


RADVD_CONF = """interface {tap} {{
    AdvSendAdvert on;
    MinRtrAdvInterval 3;
    MaxRtrAdvInterval 4;
    AdvDefaultLifetime 0;
    prefix {prefix} {{
        AdvOnLink on;
        AdvAutonomous on;
    }};
}};
"""


def test_ipv6_only_static_and_slaac(
    ramdisk: Ramdisk, pki_dir: Path, tmp_path: Path, namespace: Namespace
) -> None:
    """No IPv4 anywhere in the ramdisk once it runs (iPXE loaded it over QEMU's IPv4 user
    network): a static IPv6 address on one relay NIC and SLAAC on another, from router
    advertisements radvd sends in the namespace. The conductor reaches the agent by IPv6
    literal at each address, checking the certificate's IP SAN, then provisions it over
    IPv6 with ``tacet provision``, the image downloaded from an IPv6 literal URL."""
    if shutil.which("radvd") is None:
        raise HarnessError("the IPv6 test needs radvd: run tools/setup-e2e")
    slaac_net = ipaddress.IPv6Network("2001:db8:20::/64")
    slaac = eui64(slaac_net, MACS[1])
    data = network_data(
        [MGMT, phy("lan1", MACS[0]), phy("lan2", MACS[1])],
        [static("lan1", GUEST6, WIRE6), {"id": "lan2-slaac", "type": "ipv6_slaac", "link": "lan2"}],
    )
    bundle = node_bundle(pki_dir, data, (GUEST6, slaac))
    # the namespace's two wires: a static prefix on one, a router advertising on the other
    namespace.add_address(TAP, WIRE6, HOST6)
    namespace.add_tap("wire1", slaac_net, [str(slaac_net[1])])
    subprocess.run(namespace.command("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"), check=True)
    conf = tmp_path / "radvd.conf"
    conf.write_text(RADVD_CONF.format(tap="wire1", prefix=slaac_net))
    image = serve_image(namespace, HOST6, tmp_path)
    url = f"http://[{HOST6}]:{IMAGE_PORT}/image.raw"
    fleet = fleet_file(tmp_path, pki_dir, bundle, f"[{GUEST6}]", url, image)
    with (
        Relay(namespace.open_tap(TAP), members=("lan1",)) as wire0,
        Relay(namespace.open_tap("wire1"), members=("lan2",)) as wire1,
    ):
        namespace.start(
            "radvd",
            "--nodaemon",
            "--config",
            str(conf),
            "--pidfile",
            str(tmp_path / "radvd.pid"),
            "--logmethod",
            "stderr",
            log=tmp_path / "radvd.log",
        )
        vm = VM(
            tmp_path,
            ramdisk,
            VIRTIO,
            secrets=bundle.initrd(),
            extra_args=[*wire0.qemu_args(MACS[:1]), *wire1.qemu_args(MACS[1:2])],
        )
        vm.start()
        try:
            seconds = namespace.wait_for_listener(GUEST6, AGENT_PORT, 240)
            report("IPv6: QEMU start -> agent reachable at its static address", f"{seconds:.1f} s")
            namespace.wait_for_listener(slaac, AGENT_PORT, 60)
            trust = conductor_trust(pki_dir)
            by_static = tacet_in(
                namespace,
                "inventory",
                f"[{GUEST6}]:{AGENT_PORT}",
                "--json",
                "--refresh",
                "--retries",
                "0",
                *trust,
                timeout=120,
            )
            by_slaac = tacet_in(
                namespace,
                "status",
                slaac,
                "--retries",
                "0",
                *trust,
                timeout=120,
            )
            assert by_static.returncode == 0, by_static.stderr
            assert by_slaac.returncode == 0, by_slaac.stderr
            provision(namespace, fleet, vm, "IPv6")
        finally:
            vm.stop()
    report("IPv6: relay counters (static)", str(wire0.counters.snapshot()))
    report("IPv6: relay counters (SLAAC)", str(wire1.counters.snapshot()))
    assert wire0.error is None and wire1.error is None
    assert_image_written(vm, image, tmp_path)
    for relay in (wire0, wire1):
        assert relay.counters.get(Event.ACCEPTED, ethertype=ETH_P_IPV6) > 0
        assert relay.counters.get(Event.ACCEPTED, ethertype=ETH_P_IP) == 0
        assert relay.counters.get(Event.ACCEPTED, ethertype=ETH_P_ARP) == 0
    interfaces = {i["mac_address"]: i for i in json.loads(by_static.stdout)["interfaces"]}
    assert f"{GUEST6}/{WIRE6.prefixlen}" in addresses_of(interfaces[MACS[0]])
    assert f"{slaac}/64" in addresses_of(interfaces[MACS[1]])
    # IPv6 only: not one IPv4 address on any interface but the loopback
    v4 = [
        a
        for i in interfaces.values()
        for a in addresses_of(i)
        if "." in a and not a.startswith("127.")
    ]
    assert v4 == [], v4
