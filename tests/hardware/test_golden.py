"""Replay every recorded machine under tests/fixtures and compare with expected.json.

``expected.json`` files were produced by this code and then checked by hand against
what the machine was told (for QEMU guests: ``qemu.json``); the cross-checks below
re-verify the identity fields independently of the inventory code's own output.
"""

import json
from pathlib import Path

import pytest

from hardware import collect_inventory, fixture_sources
from tests.conftest import FIXTURES

MACHINES = sorted(p.name for p in FIXTURES.iterdir() if (p / "expected.json").exists())
QEMU_MACHINES = [m for m in MACHINES if (FIXTURES / m / "qemu.json").exists()]


def replay(machine: str) -> dict:
    return collect_inventory(fixture_sources(FIXTURES / machine)).to_dict()


def load(machine: str, name: str) -> dict:
    return json.loads((FIXTURES / machine / name).read_text())


def test_there_are_several_machine_types():
    assert len(MACHINES) >= 5
    assert len(QEMU_MACHINES) >= 4


@pytest.mark.parametrize("machine", MACHINES)
def test_golden(machine):
    assert replay(machine) == load(machine, "expected.json")


def as_seen_live(replayed: dict, live: dict) -> dict:
    """The replay with only the interface keys the live run reported: the live.json files
    were taken before the configuration keys (kind, ip_addresses, vlan_*, bond_*) existed.
    Those are checked against expected.json, qemu.json and the bond-vlan fixture."""
    interfaces = [
        {key: value for key, value in mine.items() if key in theirs}
        for mine, theirs in zip(replayed["interfaces"], live["interfaces"], strict=True)
    ]
    return {**replayed, "interfaces": interfaces}


@pytest.mark.parametrize("machine", [m for m in MACHINES if (FIXTURES / m / "live.json").exists()])
def test_replay_equals_what_the_machine_saw_live(machine):
    """The inventory taken live inside the guest equals the replay of its recording."""
    live = load(machine, "live.json")
    assert as_seen_live(replay(machine), live) == live


@pytest.mark.parametrize("machine", QEMU_MACHINES)
def test_identity_matches_what_qemu_was_told(machine):
    """Independent of expected.json: the facts QEMU was given must come out as given."""
    told = load(machine, "qemu.json")
    inventory = replay(machine)
    nics = {nic["mac_address"]: nic for nic in inventory["interfaces"]}
    told_macs = {nic["mac"].lower() for nic in told["nics"]}
    for bond in (i for i in inventory["interfaces"] if i["kind"] == "bond"):
        members = bond["bond_members"]
        assert members and {m["mac_address"] for m in members} <= told_macs
        for member in members:
            assert nics[member["mac_address"]]["bond_master"] == bond["name"]
    for nic in told["nics"]:
        found = nics[nic["mac"].lower()]
        if nic.get("link") == "down":
            assert found["has_carrier"] is False
            assert found["ipv4_address"] is None
    disks = {disk["size"]: disk for disk in inventory["disks"]}
    hard_disks = [d for d in told["disks"] if d["device"] not in ("ide-cd", "scsi-cd")]
    assert len(inventory["disks"]) == len(hard_disks)  # optical drives are skipped
    for disk in hard_disks:
        found = disks[disk["size_bytes"]]
        assert found["serial"] == disk.get("serial")  # None when QEMU was given none
        if disk.get("wwn"):
            assert found["wwn"] == disk["wwn"]
        expected_tran = {"virtio": "virtio", "nvme": "nvme", "sata": "sata", "scsi": "scsi"}
        assert found["tran"] == expected_tran[disk["bus"]]
    smbios = told["smbios"]
    vendor = inventory["system_vendor"]
    system = smbios["type1"]
    assert vendor["serial_number"] == system["serial"]
    assert vendor["manufacturer"] == system["manufacturer"]
    assert vendor["product_name"] == system["product"]
    assert vendor["uuid"] == system["uuid"].lower()
    if "type0" in smbios:
        firmware = smbios["type0"]
        assert vendor["firmware"] == {
            "vendor": firmware["vendor"],
            "version": firmware["version"],
            "build_date": firmware["date"],
        }
    smp = told["smp"]
    assert inventory["cpu"]["count"] == smp["cpus"]
    assert inventory["cpu"]["socket_count"] == smp["sockets"]
    assert inventory["memory"]["physical_mb"] == told["memory_mib"]
    assert inventory["boot"]["current_boot_mode"] == told["firmware"]
    bootif = told.get("bootif")
    if bootif and bootif.startswith("01-") and bootif.count("-") == 6:
        bootif = bootif[3:]  # pxelinux form: ARP type 1 prefix
    assert inventory["boot"]["pxe_interface"] == (bootif.replace("-", ":") if bootif else None)
    assert inventory["hostname"] == told["hostname"]


def test_a_bond_of_two_nics_with_a_vlan_on_top():
    """Independent of expected.json: the bond-vlan fixture's topology, as built."""
    interfaces = {i["name"]: i for i in replay("bond-vlan")["interfaces"]}
    assert interfaces["bond0"]["kind"] == "bond"
    assert interfaces["bond0"]["bond_mode"] == "active-backup"
    assert interfaces["bond0"]["bond_members"] == [
        {"name": "ens2", "mac_address": "52:54:00:7a:c0:11"},
        {"name": "ens3", "mac_address": "52:54:00:7a:c0:12"},
    ]
    assert interfaces["ens2"]["bond_master"] == interfaces["ens3"]["bond_master"] == "bond0"
    # The members carry the bond's current address; their own is the burnt-in one.
    assert interfaces["ens2"]["mac_address"] == "52:54:00:7a:c0:11"
    vlan = interfaces["bond0.100"]
    assert (vlan["kind"], vlan["vlan_id"], vlan["vlan_parent"]) == ("vlan", 100, "bond0")
    assert vlan["ip_addresses"] == [
        {"address": "192.0.2.10", "prefix": 24},
        {"address": "2001:db8:100::10", "prefix": 64},
        {"address": "fe80::5c58:30ff:febb:b9df", "prefix": 64},
    ]
    assert interfaces["bond0"]["ip_addresses"] == []
    assert interfaces["bond0"]["vlan_id"] is None and vlan["bond_master"] is None


def test_expected_files_are_valid_json():
    for machine in MACHINES:
        json.loads(Path(FIXTURES / machine / "expected.json").read_text())


@pytest.mark.parametrize("machine", QEMU_MACHINES)
def test_three_smbios_sources_agree_on_installed_memory(machine):
    """Raw DMI table, dmi-sysfs entries and real dmidecode output give the same DIMM total."""
    from hardware.memory import (
        iter_smbios_structures,
        parse_dmidecode_memory,
        parse_smbios_memory_device,
    )

    root = FIXTURES / machine
    table = (root / "sys/firmware/dmi/tables/DMI").read_bytes()
    from_table = sum(
        parse_smbios_memory_device(raw) or 0
        for kind, raw in iter_smbios_structures(table)
        if kind == 17
    )
    entries = sorted((root / "sys/firmware/dmi/entries").glob("17-*/raw"))
    from_entries = sum(parse_smbios_memory_device(p.read_bytes()) or 0 for p in entries)
    dmidecode = (root / "commands" / "dmidecode_--type_17.txt").read_text()
    told = load(machine, "qemu.json")["memory_mib"]
    assert from_table == from_entries == parse_dmidecode_memory(dmidecode) == told
