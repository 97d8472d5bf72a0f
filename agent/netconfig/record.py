"""What tacet-network configured, as a small JSON record the agent reads.

The agent needs the planned static addresses: to wait until they are up, to put every
one of them in its certificate and to advertise one. They are read back from the very
networkd files that were written (for network_data.json and for the kernel command line
alike), so the record cannot disagree with what networkd applies. Addresses learnt by
DHCP or router advertisements are not in it: only that they were asked for.

The record is ``network.json`` in the agent's state directory (``/run/tacet``), written
atomically, on every run of tacet-network: ``source`` says which input won
(``network_data``, ``cmdline``, ``dhcp`` when nothing was given, ``refused``). No record
at all means tacet-network did not run (nothing to read: DHCP everywhere).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wire.files import write_private

RECORD_NAME = "network.json"
VERSION = 1
MAX_BYTES = 256 * 1024
SOURCES = ("network_data", "cmdline", "dhcp", "refused")

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Section = tuple[str, list[tuple[str, str]]]


class RecordError(ValueError):
    """The record cannot be read; the message is one line."""


def record_file(state_dir: Path) -> Path:
    """Where the record is for an agent with this state directory."""
    return state_dir / RECORD_NAME


def sections(text: str) -> list[Section]:
    """A systemd unit file's sections as (name, [(key, value), ...]) in order (pure).

    Keys repeat in networkd files (``Address=``, ``VLAN=``), which configparser refuses;
    comments and blank lines are skipped.
    """
    found: list[Section] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            found.append((line[1:-1], []))
        elif found and "=" in line:
            key, _, value = line.partition("=")
            found[-1][1].append((key.strip(), value.strip()))
    return found


def _values(parsed: list[Section], section: str, key: str) -> list[str]:
    return [v for name, pairs in parsed if name == section for k, v in pairs if k == key]


def _last(parsed: list[Section], section: str, key: str) -> str | None:
    """The value that counts when a key repeats (systemd: the last one wins)."""
    values = _values(parsed, section, key)
    return values[-1] if values else None


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def from_networkd(files: Mapping[str, str], source: str) -> dict[str, Any]:
    """The record for these networkd files (``.network``/``.netdev`` by name, in the
    order they were written), pure.

    One interface per ``.network`` file, then any ``.netdev`` without one. Physical
    NICs are known by the MAC their ``[Match]`` names, or by the kernel name.
    """
    netdevs: dict[str, list[Section]] = {}
    for name, text in files.items():
        if name.endswith(".netdev"):
            parsed = sections(text)
            device = _last(parsed, "NetDev", "Name")
            if device:
                netdevs[device] = parsed
    interfaces: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name, text in files.items():
        if name.endswith(".network"):
            interfaces.append(_interface(sections(text), netdevs))
            if interfaces[-1]["name"]:
                seen.add(interfaces[-1]["name"])
    for device in netdevs:
        if device not in seen:
            interfaces.append(_interface([("Match", [("Name", device)])], netdevs))
    _link(interfaces)
    return {"version": VERSION, "source": source, "interfaces": interfaces}


def _interface(network: list[Section], netdevs: dict[str, list[Section]]) -> dict[str, Any]:
    name = _last(network, "Match", "Name")
    mac = _last(network, "Match", "PermanentMACAddress") or _last(network, "Match", "MACAddress")
    netdev = netdevs.get(name or "")
    kind = (_last(netdev, "NetDev", "Kind") if netdev else None) or "ethernet"
    dhcp = (_last(network, "Network", "DHCP") or "no").lower()
    accept_ra = _last(network, "Network", "IPv6AcceptRA")
    mtu = _last(network, "Link", "MTUBytes") or (
        _last(netdev, "NetDev", "MTUBytes") if netdev else None
    )
    return {
        "name": name,
        "mac": mac.lower() if mac else None,
        "kind": kind,  # ethernet, vlan, bond (or another netdev kind, as networkd names it)
        "vlan_id": _int(_last(netdev, "VLAN", "Id")) if netdev and kind == "vlan" else None,
        "vlan_parent": None,  # filled in by _link from the parent's VLAN=
        "bond_mode": (_last(netdev, "Bond", "Mode") if netdev and kind == "bond" else None),
        "bond_members": [] if kind == "bond" else None,
        "bond": _last(network, "Network", "Bond"),
        "mtu": _int(mtu),
        "addresses": _values(network, "Network", "Address")
        + _values(network, "Address", "Address"),
        "dhcp4": dhcp in ("yes", "ipv4", "true", "1"),
        "dhcp6": dhcp in ("yes", "ipv6", "true", "1"),
        # networkd's default (unset) accepts router advertisements unless forwarding.
        "ipv6_ra": accept_ra is None or accept_ra.lower() in ("yes", "true", "1"),
        "_vlans": _values(network, "Network", "VLAN"),
    }


def _link(interfaces: list[dict[str, Any]]) -> None:
    """Fill in VLAN parents and bond members from the other side of each relation."""
    by_name = {i["name"]: i for i in interfaces if i["name"]}
    for interface in interfaces:
        reference = {"name": interface["name"], "mac": interface["mac"]}
        for vlan in interface.pop("_vlans"):
            if vlan in by_name:
                by_name[vlan]["vlan_parent"] = reference
        bond = by_name.get(interface["bond"] or "")
        if bond is not None and bond["bond_members"] is not None:
            bond["bond_members"].append(reference)


def unconfigured(source: str) -> dict[str, Any]:
    """The record when no network files were written (DHCP, or refused input)."""
    return {"version": VERSION, "source": source, "interfaces": []}


def write(record: Mapping[str, Any], path: Path) -> None:
    """Replace the record atomically (the agent may be reading it at the same time)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, (json.dumps(record, indent=1) + "\n").encode())


@dataclass(frozen=True)
class Configured:
    """What the agent needs from the record."""

    source: str
    static: tuple[IPInterface, ...]  # in record order


def parse(text: str | bytes) -> Configured:
    """The record's source and static addresses (pure; raises RecordError)."""
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("version") != VERSION:
        raise RecordError(f"not a version {VERSION} network record")
    source, interfaces = document.get("source"), document.get("interfaces")
    if source not in SOURCES or not isinstance(interfaces, list):
        raise RecordError("no source or no interfaces")
    static: list[IPInterface] = []
    for index, interface in enumerate(interfaces):
        addresses = interface.get("addresses") if isinstance(interface, dict) else None
        if not isinstance(addresses, list):
            raise RecordError(f"interfaces[{index}].addresses: not a list")
        for text_address in addresses:
            try:
                static.append(ipaddress.ip_interface(text_address))
            except (TypeError, ValueError):
                raise RecordError(
                    f"interfaces[{index}].addresses: {text_address!r} is not an address/prefix"
                ) from None
    return Configured(source, tuple(dict.fromkeys(static)))


def read(path: Path) -> Configured | None:
    """The record at ``path``; None when there is none (raises RecordError)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RecordError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise RecordError(f"{path}: larger than {MAX_BYTES} bytes")
    try:
        return parse(data)
    except RecordError as exc:
        raise RecordError(f"{path}: {exc}") from None
