"""OpenStack's ``network_data.json`` (config-drive format) read into frozen dataclasses.

Ironic builds this file from a node's ``network_data`` for deploys without DHCP; the
ramdisk configures its network from it (``agent.netconfig``) and the conductor checks
it before packing it into a node bundle (``tacet pki node-bundle --network-data``), so
both sides read it with this one pure parser. Errors name the offending place
(``networks[1].routes[0].gateway: not an IP address``); keys and types the ramdisk does
not act on are listed in ``NetworkData.warnings`` rather than dropped silently.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Nova's link types for a NIC as the guest sees it (how the hypervisor plugs it in does
# not matter inside the machine), plus "ethernet"; all are one physical interface here.
PHYSICAL_TYPES = frozenset(
    {"phy", "ethernet", "bridge", "dvs", "hw_veb", "hyperv", "ovs", "tap", "vhostuser", "vif"}
)
# The kernel bonding driver's modes, under the names networkd's Mode= takes too.
BOND_MODES = frozenset(
    {
        "802.3ad",
        "active-backup",
        "balance-rr",
        "balance-xor",
        "broadcast",
        "balance-tlb",
        "balance-alb",
    }
)
XMIT_HASH_POLICIES = frozenset(
    {"layer2", "layer3+4", "layer2+3", "encap2+3", "encap3+4", "vlan+srcmac"}
)
LACP_RATES = frozenset({"slow", "fast"})
# Network types: static, or left to DHCP/RA. Neutron's two DHCPv6 modes map onto them.
DHCP_TYPES = {
    "ipv4_dhcp": "ipv4_dhcp",
    "ipv6_dhcp": "ipv6_dhcp",
    "ipv6_slaac": "ipv6_slaac",
    "ipv6_dhcpv6-stateful": "ipv6_dhcp",
    "ipv6_dhcpv6-stateless": "ipv6_slaac",
}
MAX_BYTES = 1024 * 1024  # ironic's network_data is a few KiB

_MAC = re.compile(r"[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}", re.IGNORECASE)
# Keys that describe the cloud rather than the machine's network: accepted, not used.
_INFORMATIONAL = frozenset({"vif_id", "network_id"})


class NetworkDataError(ValueError):
    """The file cannot be used; ``str()`` is one line naming where and why."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


@dataclass(frozen=True)
class PhysicalLink:
    id: str
    mac: str  # lower case, colon separated
    mtu: int | None = None


@dataclass(frozen=True)
class VlanLink:
    id: str
    vlan_id: int
    parent: str  # a link id
    mac: str | None = None
    mtu: int | None = None


@dataclass(frozen=True)
class BondLink:
    id: str
    mode: str
    members: tuple[str, ...]  # ids of physical links
    mac: str | None = None
    mtu: int | None = None
    miimon_ms: int | None = None
    xmit_hash_policy: str | None = None
    lacp_rate: str | None = None


Link = PhysicalLink | VlanLink | BondLink


@dataclass(frozen=True)
class Route:
    destination: IPNetwork
    gateway: IPAddress

    @property
    def is_default(self) -> bool:
        return self.destination.prefixlen == 0


@dataclass(frozen=True)
class StaticNetwork:
    """A fixed address on a link, with its routes and DNS servers."""

    id: str
    link: str
    interface: IPInterface  # address and prefix
    routes: tuple[Route, ...] = ()
    dns: tuple[IPAddress, ...] = ()


@dataclass(frozen=True)
class DynamicNetwork:
    """An address the link learns: ``ipv4_dhcp``, ``ipv6_dhcp`` or ``ipv6_slaac``."""

    id: str
    link: str
    kind: str


Network = StaticNetwork | DynamicNetwork


@dataclass(frozen=True)
class NetworkData:
    links: tuple[Link, ...]
    networks: tuple[Network, ...]
    dns: tuple[IPAddress, ...]  # the file's global "services"
    warnings: tuple[str, ...] = ()

    def link(self, link_id: str) -> Link:
        return next(link for link in self.links if link.id == link_id)


def parse(text: str | bytes) -> NetworkData:
    """The network configuration in ``text`` (pure; raises NetworkDataError)."""
    if len(text) > MAX_BYTES:
        raise NetworkDataError("", f"larger than {MAX_BYTES} bytes: not a network_data.json")
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NetworkDataError("", f"not JSON ({exc})") from None
    return _Reader().document(document)


class _Reader:
    """One parse: collects warnings while it walks the document."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def document(self, document: object) -> NetworkData:
        if not isinstance(document, dict):
            raise NetworkDataError("", "the top level is not a JSON object")
        top: Mapping[str, Any] = document
        self._unknown(top, "", {"links", "networks", "services"})
        links = self.links(_list(top.get("links"), "links"))
        networks = self.networks(_list(top.get("networks", []), "networks"), links)
        dns = self.services(_list(top.get("services", []), "services"), "services")
        return NetworkData(tuple(links.values()), tuple(networks), dns, tuple(self.warnings))

    # -- links

    def links(self, items: list[Any]) -> dict[str, Link]:
        links: dict[str, Link] = {}
        skipped: set[str] = set()
        for index, item in enumerate(items):
            where = f"links[{index}]"
            entry = _mapping(item, where)
            link_id = _string(entry.get("id"), f"{where}.id")
            if link_id in links or link_id in skipped:
                raise NetworkDataError(f"{where}.id", f"duplicate link id {link_id!r}")
            kind = _string(entry.get("type"), f"{where}.type")
            if kind in PHYSICAL_TYPES:
                links[link_id] = self.physical(entry, where, link_id)
            elif kind == "vlan":
                links[link_id] = self.vlan(entry, where, link_id)
            elif kind == "bond":
                links[link_id] = self.bond(entry, where, link_id)
            else:
                self.warnings.append(
                    f"{where}.type: link type {kind!r} not supported, link ignored"
                )
                skipped.add(link_id)
        self.check_references(links, skipped)
        return links

    def physical(self, entry: Mapping[str, Any], where: str, link_id: str) -> PhysicalLink:
        self._unknown(entry, where, {"id", "type", "ethernet_mac_address", "mtu"})
        mac = _mac(entry.get("ethernet_mac_address"), f"{where}.ethernet_mac_address")
        return PhysicalLink(link_id, mac, _mtu(entry.get("mtu"), f"{where}.mtu"))

    def vlan(self, entry: Mapping[str, Any], where: str, link_id: str) -> VlanLink:
        self._unknown(
            entry, where, {"id", "type", "vlan_id", "vlan_link", "vlan_mac_address", "mtu"}
        )
        vlan_id = _integer(entry.get("vlan_id"), f"{where}.vlan_id", 1, 4094)
        parent = _string(entry.get("vlan_link"), f"{where}.vlan_link")
        mac = entry.get("vlan_mac_address")
        return VlanLink(
            link_id,
            vlan_id,
            parent,
            None if mac is None else _mac(mac, f"{where}.vlan_mac_address"),
            _mtu(entry.get("mtu"), f"{where}.mtu"),
        )

    def bond(self, entry: Mapping[str, Any], where: str, link_id: str) -> BondLink:
        known = {"id", "type", "ethernet_mac_address", "mtu", "bond_mode", "bond_links"}
        known |= {"bond_miimon", "bond_xmit_hash_policy", "bond_lacp_rate"}
        self._unknown(entry, where, known)
        mode = _choice(entry.get("bond_mode"), f"{where}.bond_mode", BOND_MODES)
        members = _list(entry.get("bond_links"), f"{where}.bond_links")
        if not members:
            raise NetworkDataError(f"{where}.bond_links", "a bond needs at least one member")
        names = tuple(
            _string(member, f"{where}.bond_links[{i}]") for i, member in enumerate(members)
        )
        if len(set(names)) != len(names):
            raise NetworkDataError(f"{where}.bond_links", "a member is listed twice")
        mac = entry.get("ethernet_mac_address")
        miimon = entry.get("bond_miimon")
        policy = entry.get("bond_xmit_hash_policy")
        rate = entry.get("bond_lacp_rate")
        return BondLink(
            link_id,
            mode,
            names,
            None if mac is None else _mac(mac, f"{where}.ethernet_mac_address"),
            _mtu(entry.get("mtu"), f"{where}.mtu"),
            None if miimon is None else _integer(miimon, f"{where}.bond_miimon", 0, 2**31 - 1),
            None
            if policy is None
            else _choice(policy, f"{where}.bond_xmit_hash_policy", XMIT_HASH_POLICIES),
            None if rate is None else _choice(rate, f"{where}.bond_lacp_rate", LACP_RATES),
        )

    def check_references(self, links: dict[str, Link], skipped: set[str]) -> None:
        index = {link_id: i for i, link_id in enumerate(links)}
        owner: dict[str, str] = {}
        for link in links.values():
            where = f"links[{index[link.id]}]"
            if isinstance(link, VlanLink):
                if link.parent not in links:
                    raise NetworkDataError(
                        f"{where}.vlan_link",
                        f"no link {link.parent!r}" + _why(link.parent, skipped),
                    )
                if isinstance(links[link.parent], VlanLink):
                    raise NetworkDataError(
                        f"{where}.vlan_link", "a VLAN on a VLAN is not supported"
                    )
            if isinstance(link, BondLink):
                for i, member in enumerate(link.members):
                    place = f"{where}.bond_links[{i}]"
                    if not isinstance(links.get(member), PhysicalLink):
                        raise NetworkDataError(
                            place, f"{member!r} is not a physical link" + _why(member, skipped)
                        )
                    if member in owner:
                        raise NetworkDataError(place, f"{member!r} is already in {owner[member]!r}")
                    owner[member] = link.id
        for link in links.values():
            if isinstance(link, VlanLink) and link.parent in owner:
                where = f"links[{index[link.id]}].vlan_link"
                raise NetworkDataError(where, f"{link.parent!r} is a bond member")
        macs: dict[str, str] = {}
        for link in links.values():
            if isinstance(link, PhysicalLink):
                if link.mac in macs:
                    raise NetworkDataError(
                        f"links[{index[link.id]}].ethernet_mac_address",
                        f"{link.mac} is also {macs[link.mac]!r}'s",
                    )
                macs[link.mac] = link.id

    # -- networks

    def networks(self, items: list[Any], links: dict[str, Link]) -> list[Network]:
        members = {m for link in links.values() if isinstance(link, BondLink) for m in link.members}
        networks: list[Network] = []
        for index, item in enumerate(items):
            where = f"networks[{index}]"
            entry = _mapping(item, where)
            network_id = _string(entry.get("id", f"network{index}"), f"{where}.id")
            link = _string(entry.get("link"), f"{where}.link")
            kind = _string(entry.get("type"), f"{where}.type")
            if link not in links:
                raise NetworkDataError(f"{where}.link", f"no link {link!r}")
            if link in members:
                raise NetworkDataError(f"{where}.link", f"{link!r} is a bond member")
            if kind in DHCP_TYPES:
                self._unknown(entry, where, {"id", "link", "type", "services", "routes"})
                if entry.get("routes"):
                    self.warnings.append(f"{where}.routes: ignored on a {kind} network")
                networks.append(DynamicNetwork(network_id, link, DHCP_TYPES[kind]))
            elif kind in ("ipv4", "ipv6"):
                networks.append(self.static(entry, where, network_id, link, kind))
            else:
                self.warnings.append(f"{where}.type: network type {kind!r} not supported, ignored")
        return networks

    def static(
        self, entry: Mapping[str, Any], where: str, network_id: str, link: str, kind: str
    ) -> StaticNetwork:
        self._unknown(
            entry, where, {"id", "link", "type", "ip_address", "netmask", "routes", "services"}
        )
        version = 4 if kind == "ipv4" else 6
        interface = _interface(entry.get("ip_address"), entry.get("netmask"), where, version)
        routes = tuple(
            self.route(route, f"{where}.routes[{i}]", version)
            for i, route in enumerate(_list(entry.get("routes", []), f"{where}.routes"))
        )
        dns = self.services(
            _list(entry.get("services", []), f"{where}.services"), f"{where}.services"
        )
        return StaticNetwork(network_id, link, interface, routes, dns)

    def route(self, item: object, where: str, version: int) -> Route:
        entry = _mapping(item, where)
        self._unknown(entry, where, {"network", "netmask", "gateway"})
        network = _address(entry.get("network"), f"{where}.network", version)
        prefix = _prefix(entry.get("netmask"), f"{where}.netmask", version)
        gateway = _address(entry.get("gateway"), f"{where}.gateway", version)
        try:
            destination = ipaddress.ip_network(f"{network}/{prefix}")
        except ValueError:
            raise NetworkDataError(
                f"{where}.network", f"{network} has host bits set for /{prefix}"
            ) from None
        return Route(destination, gateway)

    def services(self, items: list[Any], where: str) -> tuple[IPAddress, ...]:
        found: list[IPAddress] = []
        for index, item in enumerate(items):
            place = f"{where}[{index}]"
            entry = _mapping(item, place)
            kind = _string(entry.get("type"), f"{place}.type")
            if kind != "dns":
                self.warnings.append(f"{place}.type: service {kind!r} not supported, ignored")
                continue
            self._unknown(entry, place, {"type", "address"})
            address = _address(entry.get("address"), f"{place}.address")
            if address not in found:
                found.append(address)
        return tuple(found)

    def _unknown(self, entry: Mapping[str, Any], where: str, known: set[str]) -> None:
        for key in sorted(set(entry) - known - _INFORMATIONAL):
            place = f"{where}.{key}" if where else key
            self.warnings.append(f"{place}: not supported, ignored")


def _why(link_id: str, skipped: set[str]) -> str:
    return " (its type is not supported)" if link_id in skipped else ""


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise NetworkDataError(where, "not an object")
    return value


def _list(value: object, where: str) -> list[Any]:
    if value is None:
        raise NetworkDataError(where, "missing")
    if not isinstance(value, list):
        raise NetworkDataError(where, "not a list")
    return value


def _string(value: object, where: str) -> str:
    if value is None:
        raise NetworkDataError(where, "missing")
    if not isinstance(value, str) or not value:
        raise NetworkDataError(where, "not a non-empty string")
    return value


def _integer(value: object, where: str, low: int, high: int) -> int:
    # JSON from hand-written files and ironic alike sometimes quotes numbers.
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value is None:
        raise NetworkDataError(where, "missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise NetworkDataError(where, "not an integer")
    if not low <= value <= high:
        raise NetworkDataError(where, f"{value} is outside {low}..{high}")
    return value


def _mtu(value: object, where: str) -> int | None:
    # 68 is IPv4's minimum; nova writes null when it does not know.
    return None if value is None else _integer(value, where, 68, 65535)


def _choice(value: object, where: str, choices: frozenset[str]) -> str:
    text = _string(value, where)
    if text not in choices:
        raise NetworkDataError(where, f"{text!r} is not one of {', '.join(sorted(choices))}")
    return text


def _mac(value: object, where: str) -> str:
    text = _string(value, where)
    if not _MAC.fullmatch(text):
        raise NetworkDataError(where, f"{text!r} is not a MAC address")
    return text.lower().replace("-", ":")


def _address(value: object, where: str, version: int | None = None) -> IPAddress:
    text = _string(value, where)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise NetworkDataError(where, "not an IP address") from None
    if version is not None and address.version != version:
        raise NetworkDataError(where, f"not an IPv{version} address")
    return address


def _prefix(value: object, where: str, version: int) -> int:
    """A prefix length from a netmask (``255.255.255.0``, ``ffff:ffff::``) or a number."""
    bits = 32 if version == 4 else 128
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= bits:
            return value
        raise NetworkDataError(where, f"{value} is not a prefix length for IPv{version}")
    text = _string(value, where)
    if text.isdigit():
        return _prefix(int(text), where, version)
    try:
        mask = ipaddress.ip_address(text)
    except ValueError:
        mask = None
    if mask is None or mask.version != version:
        raise NetworkDataError(where, f"{text!r} is not an IPv{version} netmask")
    prefix = bin(int(mask)).count("1")
    if int(mask) != _mask(prefix, bits):
        raise NetworkDataError(where, f"{text!r} is not a netmask (its ones are not contiguous)")
    return prefix


def _mask(prefix: int, bits: int) -> int:
    return ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)


def _interface(address: object, netmask: object, where: str, version: int) -> IPInterface:
    text = _string(address, f"{where}.ip_address")
    host, slash, length = text.partition("/")
    ip = _address(host, f"{where}.ip_address", version)
    if slash:
        prefix = _prefix(length, f"{where}.ip_address", version)
        if netmask is not None and _prefix(netmask, f"{where}.netmask", version) != prefix:
            raise NetworkDataError(f"{where}.netmask", "disagrees with the prefix of ip_address")
    elif netmask is None:
        raise NetworkDataError(f"{where}.netmask", "missing (and ip_address has no /prefix)")
    else:
        prefix = _prefix(netmask, f"{where}.netmask", version)
    return ipaddress.ip_interface(f"{ip}/{prefix}")
