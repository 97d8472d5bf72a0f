"""network_data.json's dataclasses as systemd-networkd files (pure: name -> text).

The files go to ``/run/systemd/network`` under ``10-tacet-*`` names. networkd applies the
first ``.network`` file (in name order, across its directories) whose ``[Match]`` fits a
link, so these win over the ramdisk's DHCP-everywhere ``80-tacet-wired.network`` for
every NIC they name; NICs the file does not name keep DHCP.

Physical NICs are matched by ``PermanentMACAddress=``, the address burnt into the NIC:
a bond gives its members the bond's address (the current ``MACAddress=`` then changes
under networkd's feet), and a VLAN or a bond shares its parent's current address but has
no permanent one, so neither is mistaken for the NIC.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from wire.network_data import (
    BondLink,
    DynamicNetwork,
    IPAddress,
    Link,
    NetworkData,
    PhysicalLink,
    StaticNetwork,
    VlanLink,
)

PREFIX = "10-tacet-"
HEADER = "# Written at boot by tacet-network from network_data.json"
# Without link monitoring (the kernel's default, miimon=0) a bond never notices a dead member.
DEFAULT_MIIMON_MS = 100
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")

# What stands in for DHCP on every NIC when the configuration was refused and the operator
# did not allow falling back to DHCP: the NICs stay down, and the console says why.
NO_NETWORK_FILE = f"{PREFIX}no-network.network"
NO_NETWORK = """\
# Written at boot by tacet-network: the network configuration was refused and falling back
# to DHCP is not allowed (tacet.network-fallback=dhcp on the kernel command line allows it).
[Match]
Type=ether
Kind=!*

[Link]
Unmanaged=yes
"""


def interface_names(data: NetworkData) -> dict[str, str]:
    """Kernel names for the bonds and VLANs to create: the link's id where it is a valid
    interface name (``bond0``), else ``bond<n>`` / ``vlan<id>``; unique."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for index, link in enumerate(data.links):
        if isinstance(link, PhysicalLink):
            continue
        if _IFNAME.fullmatch(link.id) and link.id not in taken:
            name = link.id
        else:
            base = f"bond{index}" if isinstance(link, BondLink) else f"vlan{link.vlan_id}"
            name, n = base, 1
            while name in taken or any(other.id == name for other in data.links):
                name, n = f"{base}-{n}", n + 1
        names[link.id] = name
        taken.add(name)
    return names


def render(data: NetworkData) -> dict[str, str]:
    """The networkd files (.netdev and .network) for ``data``, by file name."""
    names = interface_names(data)
    bond_of = {
        member: link.id
        for link in data.links
        if isinstance(link, BondLink)
        for member in link.members
    }
    files: dict[str, str] = {}
    for index, link in enumerate(data.links):
        origin = f"{HEADER}: links[{index}] ({link.id})"
        if isinstance(link, PhysicalLink):
            stem = PREFIX + link.mac.replace(":", "")
        else:
            stem = PREFIX + names[link.id]
            files[f"{stem}.netdev"] = _netdev(link, names, origin)
        if link.id in bond_of:
            body = _member(link, names[bond_of[link.id]])
        else:
            body = _network(link, data, names)
        files[f"{stem}.network"] = f"{origin}\n{_match(link, names)}{body}"
    return files


def _match(link: Link, names: dict[str, str]) -> str:
    if isinstance(link, PhysicalLink):
        return f"[Match]\nPermanentMACAddress={link.mac}\n"
    return f"[Match]\nName={names[link.id]}\n"


def _netdev(link: BondLink | VlanLink, names: dict[str, str], origin: str) -> str:
    lines = [origin, "[NetDev]", f"Name={names[link.id]}"]
    lines.append("Kind=vlan" if isinstance(link, VlanLink) else "Kind=bond")
    if link.mac:
        lines.append(f"MACAddress={link.mac}")
    if isinstance(link, VlanLink):
        lines += ["", "[VLAN]", f"Id={link.vlan_id}"]
    else:
        miimon = DEFAULT_MIIMON_MS if link.miimon_ms is None else link.miimon_ms
        lines += ["", "[Bond]", f"Mode={link.mode}", f"MIIMonitorSec={miimon}ms"]
        if link.xmit_hash_policy:
            lines.append(f"TransmitHashPolicy={link.xmit_hash_policy}")
        if link.lacp_rate:
            lines.append(f"LACPTransmitRate={link.lacp_rate}")
    return "\n".join(lines) + "\n"


def _member(link: Link, bond: str) -> str:
    lines = [""]
    if link.mtu:
        lines += ["[Link]", f"MTUBytes={link.mtu}", ""]
    lines += ["[Network]", f"Bond={bond}"]
    return "\n".join(lines) + "\n"


def _network(link: Link, data: NetworkData, names: dict[str, str]) -> str:
    networks = [n for n in data.networks if n.link == link.id]
    static = [n for n in networks if isinstance(n, StaticNetwork)]
    kinds = {n.kind for n in networks if isinstance(n, DynamicNetwork)}
    dhcp4 = "ipv4_dhcp" in kinds
    dhcp6 = "ipv6_dhcp" in kinds
    accept_ra = dhcp6 or "ipv6_slaac" in kinds
    ipv6 = accept_ra or any(n.interface.version == 6 for n in static)
    lines = [""]
    if link.mtu:
        lines += ["[Link]", f"MTUBytes={link.mtu}", ""]
    lines.append("[Network]")
    lines.append(
        "DHCP="
        + {(True, True): "yes", (True, False): "ipv4", (False, True): "ipv6"}.get(
            (dhcp4, dhcp6), "no"
        )
    )
    lines.append(f"IPv6AcceptRA={'yes' if accept_ra else 'no'}")
    lines.append(f"LinkLocalAddressing={'ipv6' if ipv6 else 'no'}")
    lines += [f"Address={n.interface.with_prefixlen}" for n in static]
    routes = [route for n in static for route in n.routes]
    lines += [f"Gateway={route.gateway}" for route in routes if route.is_default]
    dns = [address for n in static for address in n.dns]
    if networks:
        dns += data.dns
    lines += [f"DNS={address}" for address in _unique(dns)]
    lines += [
        f"VLAN={names[other.id]}"
        for other in data.links
        if isinstance(other, VlanLink) and other.parent == link.id
    ]
    for route in routes:
        if not route.is_default:
            lines += ["", "[Route]", f"Destination={route.destination}", f"Gateway={route.gateway}"]
    if dhcp4:
        # As the DHCP-everywhere file does: a stable identity across reboots and NICs.
        lines += ["", "[DHCPv4]", "ClientIdentifier=mac"]
    return "\n".join(lines) + "\n"


def _unique(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    return list(dict.fromkeys(addresses))
