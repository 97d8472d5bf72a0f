"""Network interfaces: physical NICs, VLANs and bonds, with their kernel-reported facts.

How they are tied together comes from the kernel too: a bond's mode and members from
``bonding/mode`` and ``bonding/slaves``, a member's bond from those lists (or its
``master`` link), a VLAN's id and parent from ``/proc/net/vlan/config`` (the parent
also from ``iflink``, the parent's ifindex). What the kernel does not say stays None.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .lldp import Tlvs
from .model import BondMember, Interface, InterfaceAddress
from .sysfs import link_name, list_dir, parse_uevent, read_int, read_stripped, read_text, resolve

ARPHRD_ETHER = 1
ARPHRD_INFINIBAND = 32
VIRTUAL_KINDS_KEPT = frozenset({"vlan", "bond"})
PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
# Kernels report SPEED_UNKNOWN as -1, older ones as the unsigned 32-bit value.
UNKNOWN_SPEEDS = frozenset({-1, 0, 65535, 4294967295})


@dataclass(frozen=True)
class Addresses:
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    # Every address with its prefix length (None when the source did not give one).
    with_prefix: tuple[tuple[str, int | None], ...] = ()


@dataclass(frozen=True)
class Vlan:
    vlan_id: int
    parent: str


class AddressSource(Protocol):
    def addresses(self) -> dict[str, Addresses]: ...


class EthtoolSource(Protocol):
    def permanent_mac(self, name: str) -> str | None: ...

    def driver(self, name: str) -> str | None: ...


def choose_ipv6(addresses: tuple[str, ...]) -> str | None:
    """First global address, else the first link-local one, without a ``%scope`` suffix."""
    cleaned: list[ipaddress.IPv6Address] = []
    for address in addresses:
        text = address.split("%", 1)[0]
        try:
            cleaned.append(ipaddress.IPv6Address(text))
        except ValueError:
            continue
    for candidate in cleaned:
        if not candidate.is_link_local:
            return str(candidate)
    return str(cleaned[0]) if cleaned else None


def prefix_of(netmask: object) -> int | None:
    """A prefix length from netifaces' ``netmask`` (``255.255.255.0``,
    ``ffff:ffff:ffff:ffff::/64``); None when it is not a contiguous mask."""
    if not isinstance(netmask, str) or not netmask:
        return None
    mask, slash, length = netmask.partition("/")
    if slash:
        return int(length) if length.isdigit() else None
    try:
        value = ipaddress.ip_address(mask)
    except ValueError:
        return None
    bits = value.max_prefixlen
    ones = bin(int(value)).count("1")
    contiguous = int(value) == ((1 << bits) - 1) ^ ((1 << (bits - ones)) - 1)
    return ones if contiguous else None


def _bare(address: str) -> str:
    return address.split("%", 1)[0]


def parse_ip_json(text: str) -> dict[str, Addresses]:
    """``ip -j addr`` output to addresses per interface, in the kernel's order."""
    result: dict[str, Addresses] = {}
    try:
        links: list[dict[str, Any]] = json.loads(text or "[]")
    except json.JSONDecodeError:
        return result
    for link in links:
        name = link.get("ifname")
        if not name:
            continue
        infos = [a for a in link.get("addr_info", []) if a.get("family") in ("inet", "inet6")]
        v4 = tuple(a["local"] for a in infos if a.get("family") == "inet")
        v6 = tuple(a["local"] for a in infos if a.get("family") == "inet6")
        prefixed = tuple(
            (_bare(a["local"]), a["prefixlen"] if isinstance(a.get("prefixlen"), int) else None)
            for a in infos
        )
        result[name] = Addresses(ipv4=v4, ipv6=v6, with_prefix=prefixed)
    return result


def parse_vlan_config(text: str | None) -> dict[str, Vlan]:
    """``/proc/net/vlan/config`` (``name | id | parent`` after two header lines) to each
    VLAN's id and parent (pure)."""
    found: dict[str, Vlan] = {}
    for line in (text or "").splitlines():
        fields = [field.strip() for field in line.split("|")]
        if len(fields) == 3 and fields[1].isdigit() and fields[0] and fields[2]:
            found[fields[0]] = Vlan(int(fields[1]), fields[2])
    return found


def parse_bond_mode(text: str | None) -> str | None:
    """``bonding/mode`` (``active-backup 1``) to the mode's name."""
    words = (text or "").split()
    return words[0] if words else None


class NetifacesAddresses:
    """Live addresses through netifaces (``netifaces-plus`` installs the same module)."""

    def addresses(self) -> dict[str, Addresses]:
        import netifaces

        result = {}
        for name in netifaces.interfaces():
            families = netifaces.ifaddresses(name)
            v4 = [a for a in families.get(netifaces.AF_INET, []) if "addr" in a]
            v6 = [a for a in families.get(netifaces.AF_INET6, []) if "addr" in a]
            result[name] = Addresses(
                ipv4=tuple(a["addr"] for a in v4),
                ipv6=tuple(a["addr"] for a in v6),
                with_prefix=tuple((_bare(a["addr"]), prefix_of(a.get("netmask"))) for a in v4 + v6),
            )
        return result


def normalise_mac(text: str | None) -> str | None:
    if not text:
        return None
    mac = text.strip().lower()
    if not re.match(r"^[0-9a-f]{2}(:[0-9a-f]{2})+$", mac) or not mac.strip("0:"):
        return None
    return mac


def parse_speed(text: str | None) -> int | None:
    try:
        speed = int((text or "").strip())
    except ValueError:
        return None
    return None if speed in UNKNOWN_SPEEDS or speed < 0 else speed


class InterfaceCollector:
    def __init__(
        self,
        sysfs: Path,
        addresses: Callable[[], dict[str, Addresses]],
        ethtool: EthtoolSource,
        lldp: Callable[[list[str]], dict[str, Tlvs]] | None = None,
        procfs: Path | None = None,
    ) -> None:
        self.class_dir = sysfs / "class" / "net"
        self.vlan_config = procfs / "net" / "vlan" / "config" if procfs else None
        self.get_addresses = addresses
        self.ethtool = ethtool
        self.capture_lldp = lldp

    def kind(self, directory: Path) -> str | None:
        """``physical``, ``vlan`` or ``bond`` for interfaces we report, else None."""
        if directory.name == "lo":
            return None
        hw_type = read_int(directory / "type")
        if hw_type not in (ARPHRD_ETHER, ARPHRD_INFINIBAND):
            return None
        devtype = parse_uevent(read_text(directory / "uevent")).get("DEVTYPE")
        if devtype in VIRTUAL_KINDS_KEPT:
            return devtype
        if devtype == "bridge":
            return None
        return "physical" if (directory / "device").is_symlink() else None

    @staticmethod
    def pci_device(directory: Path) -> Path | None:
        """The PCI function behind a NIC (virtio NICs sit one level below it)."""
        if not (directory / "device").is_symlink():
            return None
        current = resolve(directory / "device")
        for _ in range(4):
            if PCI_ADDRESS.match(current.name):
                return current
            current = current.parent
        return None

    def mac_address(self, name: str) -> str | None:
        """The burnt-in address: a bond gives its members its own current one."""
        directory = self.class_dir / name
        return (
            normalise_mac(self.ethtool.permanent_mac(name))
            or normalise_mac(read_stripped(directory / "bonding_slave" / "perm_hwaddr"))
            or normalise_mac(read_stripped(directory / "address"))
        )

    def topology(self, kinds: dict[str, str | None]) -> dict[str, dict[str, Any]]:
        """Per interface, the new keys that tie VLANs and bonds to their interfaces."""
        vlans = parse_vlan_config(read_text(self.vlan_config) if self.vlan_config else None)
        by_index = {
            index: name
            for name in kinds
            if (index := read_int(self.class_dir / name / "ifindex")) is not None
        }
        found: dict[str, dict[str, Any]] = {name: {} for name, kind in kinds.items() if kind}
        for name, keys in found.items():
            directory = self.class_dir / name
            if kinds[name] == "vlan":
                vlan = vlans.get(name)
                parent = by_index.get(read_int(directory / "iflink") or -1)
                keys["vlan_id"] = vlan.vlan_id if vlan else None
                keys["vlan_parent"] = vlan.parent if vlan else parent
            if kinds[name] == "bond":
                keys["bond_mode"] = parse_bond_mode(read_text(directory / "bonding" / "mode"))
                slaves = read_text(directory / "bonding" / "slaves")
                members = (slaves or "").split()
                keys["bond_members"] = (
                    None
                    if slaves is None
                    else [BondMember(member, self.mac_address(member)) for member in members]
                )
                for member in members:
                    if member in found:
                        found[member]["bond_master"] = name
        for name, keys in found.items():
            master = link_name(self.class_dir / name / "master")
            if "bond_master" not in keys and master and kinds.get(master) == "bond":
                keys["bond_master"] = master
        return found

    def describe(
        self,
        name: str,
        addresses: dict[str, Addresses],
        lldp: Tlvs | None = None,
        kind: str | None = None,
        topology: dict[str, Any] | None = None,
    ) -> Interface:
        directory = self.class_dir / name
        pci = self.pci_device(directory)
        addrs = addresses.get(name, Addresses())
        carrier = read_stripped(directory / "carrier")
        driver = link_name(directory / "device" / "driver") or self.ethtool.driver(name)
        return Interface(
            name=name,
            mac_address=self.mac_address(name),
            ipv4_address=addrs.ipv4[0] if addrs.ipv4 else None,
            ipv6_address=choose_ipv6(addrs.ipv6),
            has_carrier=None if carrier is None else carrier == "1",
            vendor=read_stripped(pci / "vendor") if pci else None,
            product=read_stripped(pci / "device") if pci else None,
            pci_address=pci.name if pci else None,
            driver=driver,
            speed_mbps=parse_speed(read_text(directory / "speed")),
            lldp=lldp,
            kind=kind,
            ip_addresses=[InterfaceAddress(a, prefix) for a, prefix in addrs.with_prefix]
            if name in addresses
            else None,
            **(topology or {}),
        )

    def collect(self) -> list[Interface]:
        kinds = {name: self.kind(self.class_dir / name) for name in list_dir(self.class_dir)}
        names = [name for name, kind in kinds.items() if kind is not None]
        if not names:
            return []
        addresses = self.get_addresses()
        topology = self.topology(kinds)
        neighbours: dict[str, Tlvs] = {}
        physical = [name for name in names if kinds[name] == "physical"]
        if self.capture_lldp is not None:
            neighbours = self.capture_lldp(physical)
        return [
            self.describe(
                name,
                addresses,
                # Asked for LLDP: [] means "listened, heard nothing"; VLANs/bonds stay null.
                neighbours.get(name, []) if self.capture_lldp and name in physical else None,
                kinds[name],
                topology[name],
            )
            for name in names
        ]
