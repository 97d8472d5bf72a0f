"""Network interfaces: physical NICs, VLANs and bonds, with their kernel-reported facts."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .lldp import Tlvs
from .model import Interface
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
        v4 = tuple(a["local"] for a in link.get("addr_info", []) if a.get("family") == "inet")
        v6 = tuple(a["local"] for a in link.get("addr_info", []) if a.get("family") == "inet6")
        result[name] = Addresses(ipv4=v4, ipv6=v6)
    return result


class NetifacesAddresses:
    """Live addresses through netifaces (``netifaces-plus`` installs the same module)."""

    def addresses(self) -> dict[str, Addresses]:
        import netifaces

        result = {}
        for name in netifaces.interfaces():
            families = netifaces.ifaddresses(name)
            v4 = tuple(a["addr"] for a in families.get(netifaces.AF_INET, []) if "addr" in a)
            v6 = tuple(a["addr"] for a in families.get(netifaces.AF_INET6, []) if "addr" in a)
            result[name] = Addresses(ipv4=v4, ipv6=v6)
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
    ) -> None:
        self.class_dir = sysfs / "class" / "net"
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

    def describe(
        self, name: str, addresses: dict[str, Addresses], lldp: Tlvs | None = None
    ) -> Interface:
        directory = self.class_dir / name
        pci = self.pci_device(directory)
        addrs = addresses.get(name, Addresses())
        carrier = read_stripped(directory / "carrier")
        driver = link_name(directory / "device" / "driver") or self.ethtool.driver(name)
        return Interface(
            name=name,
            mac_address=normalise_mac(self.ethtool.permanent_mac(name))
            or normalise_mac(read_stripped(directory / "address")),
            ipv4_address=addrs.ipv4[0] if addrs.ipv4 else None,
            ipv6_address=choose_ipv6(addrs.ipv6),
            has_carrier=None if carrier is None else carrier == "1",
            vendor=read_stripped(pci / "vendor") if pci else None,
            product=read_stripped(pci / "device") if pci else None,
            pci_address=pci.name if pci else None,
            driver=driver,
            speed_mbps=parse_speed(read_text(directory / "speed")),
            lldp=lldp,
        )

    def collect(self) -> list[Interface]:
        kinds = {name: self.kind(self.class_dir / name) for name in list_dir(self.class_dir)}
        names = [name for name, kind in kinds.items() if kind is not None]
        if not names:
            return []
        addresses = self.get_addresses()
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
            )
            for name in names
        ]
