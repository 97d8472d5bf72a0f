"""The inventory's shape: frozen dataclasses that serialise to IPA's JSON keys.

Every field that the kernel did not tell us is ``None`` (JSON ``null``); nothing here
has a default that could pass for a measured value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class InterfaceAddress:
    address: str  # IPv4 or IPv6, without a ``%scope``
    prefix: int | None


@dataclass(frozen=True)
class BondMember:
    name: str
    mac_address: str | None  # the member's own (permanent) address


@dataclass(frozen=True)
class Interface:
    name: str
    mac_address: str | None
    ipv4_address: str | None
    ipv6_address: str | None
    has_carrier: bool | None
    vendor: str | None
    product: str | None
    pci_address: str | None
    driver: str | None
    speed_mbps: int | None
    client_id: str | None = None
    biosdevname: str | None = None
    lldp: list[list[Any]] | None = None
    # Tacet's additions: how the interface is configured, as the kernel reports it.
    kind: str | None = None  # physical, vlan or bond
    ip_addresses: list[InterfaceAddress] | None = None  # every address, in kernel order
    vlan_id: int | None = None
    vlan_parent: str | None = None  # the interface a VLAN sits on
    bond_mode: str | None = None
    bond_members: list[BondMember] | None = None
    bond_master: str | None = None  # the bond a member belongs to


@dataclass(frozen=True)
class Disk:
    name: str
    model: str | None
    size: int
    rotational: bool | None
    serial: str | None
    wwn: str | None
    wwn_with_extension: str | None
    wwn_vendor_extension: str | None
    vendor: str | None
    hctl: str | None
    by_path: str | None
    logical_sectors: int | None
    physical_sectors: int | None
    tran: str | None


@dataclass(frozen=True)
class Cpu:
    model_name: str | None
    frequency: str | None
    count: int | None
    architecture: str | None
    flags: list[str]
    socket_count: int | None


@dataclass(frozen=True)
class Memory:
    total: int | None
    physical_mb: int | None


@dataclass(frozen=True)
class Firmware:
    vendor: str | None
    version: str | None
    build_date: str | None


@dataclass(frozen=True)
class SystemVendor:
    product_name: str | None
    serial_number: str | None
    manufacturer: str | None
    uuid: str | None
    firmware: Firmware


@dataclass(frozen=True)
class Boot:
    current_boot_mode: str
    pxe_interface: str | None


@dataclass(frozen=True)
class Bmc:
    address: str | None
    v6address: str | None
    mac: str | None


@dataclass(frozen=True)
class Inventory:
    interfaces: list[Interface] | None
    disks: list[Disk] | None
    cpu: Cpu | None
    memory: Memory | None
    system_vendor: SystemVendor | None
    boot: Boot | None
    bmc: Bmc | None
    hostname: str | None
    collection_errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """IPA's top-level keys (``bmc_*`` flattened), plus Tacet's additions."""
        data = {
            "interfaces": _plain(self.interfaces),
            "disks": _plain(self.disks),
            "cpu": _plain(self.cpu),
            "memory": _plain(self.memory),
            "system_vendor": _plain(self.system_vendor),
            "boot": _plain(self.boot),
            "bmc_address": self.bmc.address if self.bmc else None,
            "bmc_v6address": self.bmc.v6address if self.bmc else None,
            "bmc_mac": self.bmc.mac if self.bmc else None,
            "hostname": self.hostname,
            "tacet_schema_version": SCHEMA_VERSION,
            "collection_errors": dict(self.collection_errors),
        }
        return data


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [dataclasses.asdict(item) for item in value]
    return dataclasses.asdict(value)
