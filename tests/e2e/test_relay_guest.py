"""The ramdisk on a tagged link and on an 802.3ad bond, through the userspace relay.

The host end of these links is ``relay.py`` (the kernel the tests run on may have
neither 8021q nor bonding). The guest's first NIC stays on QEMU's user network (the
conductor's way in); its relay NICs get their configuration from systemd-networkd files
added to the per-node initrd (``10-relay-*``, ahead of the ramdisk's own
``80-tacet-wired.network``), matched by MAC address. The agent is then reached over the
relay link from inside the test's network namespace, and the relay's counters show how
the guest's frames came.

Why not dracut's ``vlan=``/``bond=`` on the kernel command line: systemd-network-generator
writes ``90-*.network`` files, which the ramdisk's ``80-tacet-wired.network`` (DHCP on
every wired NIC) outranks for the physical NIC, so the VLAN is never attached to it; and
the generator does not apply bond options (the mode among them) at all.
"""

from __future__ import annotations

import gzip
import ipaddress
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conductor import cpio, pki

from .harness import AGENT_PORT, VM, Ramdisk, report
from .netns import Namespace, require_namespace_tools
from .qmp import qmp_args, set_link
from .relay import ETH_P_ARP, ETH_P_IP, Event, Relay
from .test_ramdisk import VIRTIO, boot_for_conductor

pytestmark = pytest.mark.e2e

WIRE = ipaddress.IPv4Network("192.0.2.0/24")
HOST_IP = "192.0.2.1"
GUEST_IP = "192.0.2.10"
TAP = "wire0"
VID = 100
MACS = ["52:54:00:7a:e2:11", "52:54:00:7a:e2:12"]
NETWORK_DIR = "etc/systemd/network"


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    try:
        require_namespace_tools()
    except AssertionError as exc:
        pytest.fail(str(exc), pytrace=False)
    with Namespace(f"tacet-relay-{uuid.uuid4().hex[:8]}") as ns:
        ns.add_tap(TAP, WIRE, [HOST_IP])
        yield ns


def initrd_with_network(bundle: pki.NodeBundle, units: dict[str, str]) -> bytes:
    """The node's initrd plus networkd files (name -> text) in /etc/systemd/network."""
    entries = [
        *bundle.entries(),
        cpio.directory("etc/systemd", 0o755),
        cpio.directory(NETWORK_DIR, 0o755),
        *(cpio.file(f"{NETWORK_DIR}/{name}", text.encode()) for name, text in units.items()),
    ]
    return gzip.compress(cpio.pack(entries), mtime=0)


def member_unit(mac: str, setting: str) -> str:
    # Kind=!*: a VLAN device on the NIC has the NIC's MAC address, and must not match.
    return f"[Match]\nMACAddress={mac}\nKind=!*\n\n[Network]\n{setting}\nLinkLocalAddressing=no\n"


def boot_on(
    relay: Relay,
    units: dict[str, str],
    workdir: Path,
    ramdisk: Ramdisk,
    pki_dir: Path,
    bundle: pki.NodeBundle,
    extra_args: tuple[str, ...] = (),
) -> VM:
    vm = VM(
        workdir,
        ramdisk,
        VIRTIO,
        secrets=initrd_with_network(bundle, units),
        extra_args=[*relay.qemu_args(MACS[: len(relay.members)]), *extra_args],
    )
    boot_for_conductor(vm, pki_dir)
    return vm


def test_agent_reached_over_a_tagged_vlan(
    ramdisk: Ramdisk,
    pki_dir: Path,
    bundle: pki.NodeBundle,
    tmp_path: Path,
    namespace: Namespace,
) -> None:
    units = {
        "10-relay-lan1.network": member_unit(MACS[0], f"VLAN=vlan{VID}"),
        f"10-relay-vlan{VID}.netdev": f"[NetDev]\nName=vlan{VID}\nKind=vlan\n\n[VLAN]\nId={VID}\n",
        f"10-relay-vlan{VID}.network": (
            f"[Match]\nName=vlan{VID}\n\n[Network]\nAddress={GUEST_IP}/{WIRE.prefixlen}\n"
        ),
    }
    with Relay(namespace.open_tap(TAP), members=("lan1",), vlan=VID) as relay:
        vm = boot_on(relay, units, tmp_path, ramdisk, pki_dir, bundle)
        try:
            seconds = namespace.wait_for_listener(GUEST_IP, AGENT_PORT, 120)
        finally:
            vm.stop()
        counts = relay.counters
        report(
            "VLAN: agent reachable over the tagged link", f"{seconds:.1f} s after its first answer"
        )
        report("VLAN: relay counters", str(counts.snapshot()))
        assert relay.error is None
        assert counts.get(Event.ACCEPTED, ethertype=ETH_P_ARP) > 0
        assert counts.get(Event.ACCEPTED, ethertype=ETH_P_IP) > 0
        assert counts.get(Event.SENT, ethertype=ETH_P_IP) > 0
        # nothing left the guest untagged or in another VLAN
        assert counts.get(Event.UNTAGGED) == 0
        assert counts.get(Event.WRONG_VID) == 0
        assert counts.get(Event.QINQ) == 0


def test_agent_reached_over_an_lacp_bond(
    ramdisk: Ramdisk,
    pki_dir: Path,
    bundle: pki.NodeBundle,
    tmp_path: Path,
    namespace: Namespace,
) -> None:
    units = bond_units(
        "Mode=802.3ad\nLACPTransmitRate=fast\nMIIMonitorSec=100ms\nTransmitHashPolicy=layer3+4\n"
    )
    members = ("lan1", "lan2")
    with Relay(namespace.open_tap(TAP), members=members, lacp=True) as relay:
        vm = boot_on(relay, units, tmp_path, ramdisk, pki_dir, bundle)
        try:
            seconds = namespace.wait_for_listener(GUEST_IP, AGENT_PORT, 120)
        finally:
            vm.stop()
        counts = relay.counters
        report("bond: agent reachable over the bond", f"{seconds:.1f} s after its first answer")
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


def bond_units(mode_settings: str) -> dict[str, str]:
    return {
        "10-relay-bond0.netdev": f"[NetDev]\nName=bond0\nKind=bond\n\n[Bond]\n{mode_settings}",
        "10-relay-lan1.network": member_unit(MACS[0], "Bond=bond0"),
        "10-relay-lan2.network": member_unit(MACS[1], "Bond=bond0"),
        "10-relay-bond0.network": (
            f"[Match]\nName=bond0\n\n[Network]\nAddress={GUEST_IP}/{WIRE.prefixlen}\n"
            "LinkLocalAddressing=no\n"
        ),
    }


def test_active_backup_bond_fails_over_when_the_active_member_loses_its_link(
    ramdisk: Ramdisk,
    pki_dir: Path,
    bundle: pki.NodeBundle,
    tmp_path: Path,
    namespace: Namespace,
) -> None:
    units = bond_units("Mode=active-backup\nMIIMonitorSec=100ms\n")
    members = ("lan1", "lan2")
    monitor = tmp_path / "qmp.sock"
    with Relay(namespace.open_tap(TAP), members=members) as relay:
        vm = boot_on(relay, units, tmp_path, ramdisk, pki_dir, bundle, tuple(qmp_args(monitor)))
        try:
            namespace.wait_for_listener(GUEST_IP, AGENT_PORT, 120)
            active = relay.switch.active_member()
            assert active in members
            other = members[1 - members.index(active)]
            before = relay.counters.get(Event.ACCEPTED, member=other)
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
