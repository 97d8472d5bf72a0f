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


@pytest.mark.parametrize("machine", [m for m in MACHINES if (FIXTURES / m / "live.json").exists()])
def test_replay_equals_what_the_machine_saw_live(machine):
    """The inventory taken live inside the guest equals the replay of its recording."""
    assert replay(machine) == load(machine, "live.json")


@pytest.mark.parametrize("machine", QEMU_MACHINES)
def test_identity_matches_what_qemu_was_told(machine):
    """Independent of expected.json: the facts QEMU was given must come out as given."""
    told = load(machine, "qemu.json")
    inventory = replay(machine)
    nics = {nic["mac_address"]: nic for nic in inventory["interfaces"]}
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
