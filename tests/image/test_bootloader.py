"""UEFI boot entries for a whole-disk image: disk image files and loop devices, a
temporary directory standing in for efivarfs."""

from __future__ import annotations

import re
import subprocess
import uuid

import pytest

from image.bootloader import install_uefi_boot
from image.efi import EfiVars, FilePath, HardDrive
from image.errors import BadInput, Conflict
from tests.image.conftest import MIB, make_uefi_disk, mtools, need, run

LOADERS = {
    "EFI/debian/BOOTX64.CSV": "shimx64.efi,debian,,boot entry\n".encode("utf-16"),
    "EFI/debian/shimx64.efi": b"MZ shim",
    "EFI/debian/grubx64.efi": b"MZ grub",
    "EFI/BOOT/BOOTX64.EFI": b"MZ fallback",
}


def sgdisk_partition(disk: str, number: int) -> dict[str, str]:
    """What sgdisk itself says of a partition: an independent reading of the GPT."""
    text = run(need("sgdisk"), "-i", str(number), disk)
    fields = dict(re.findall(r"^([^:\n]+): (.*)$", text, re.MULTILINE))
    return {
        "guid": fields["Partition unique GUID"].lower(),
        "first": fields["First sector"].split()[0],
        "size": fields["Partition size"].split()[0],
    }


def expected_drive(disk: str) -> HardDrive:
    found = sgdisk_partition(disk, 1)
    return HardDrive(1, int(found["first"]), int(found["size"]), uuid.UUID(found["guid"]))


def test_entries_for_the_loaders_of_a_disk_image(tmp_path):
    disk = tmp_path / "disk.img"
    make_uefi_disk(disk, 32 * MIB, LOADERS)
    efivars = EfiVars(tmp_path / "efivars")
    efivars.root.mkdir()
    done = install_uefi_boot(str(disk), efivars, arch="x64")
    (entry,) = done.entries
    assert entry.created and entry.option.description == "debian"
    assert entry.option.device_path == (
        expected_drive(str(disk)),
        FilePath("\\EFI\\debian\\shimx64.efi"),
    )
    assert done.boot_order == efivars.boot_order() == (entry.number,)
    again = install_uefi_boot(str(disk), efivars, arch="x64")
    assert [(e.number, e.created) for e in again.entries] == [(entry.number, False)]
    assert efivars.boot_numbers() == [entry.number]


def test_a_4k_sector_loop_device_counts_in_its_own_blocks(tmp_path):
    # The HD node's start and size are in the disk's logical blocks, not 512-byte sectors.
    backing = tmp_path / "4k.img"
    with open(backing, "wb") as handle:
        handle.truncate(64 * MIB)
    try:
        disk = run(need("losetup"), "--find", "--show", "--sector-size", "4096", str(backing))
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.fail(f"loop devices are required (run as root with /dev/loop-control): {exc}")
    disk = disk.strip()
    try:
        run(need("sgdisk"), "-n1:0:+16M", "-t1:ef00", disk)
        start = int(sgdisk_partition(disk, 1)["first"])
        run(need("mkfs.vfat"), "-S", "4096", f"--offset={start}", disk, str(16 * 1024))
        mtools("mmd", "-i", f"{disk}@@{start * 4096}", "::/EFI", "::/EFI/BOOT")
        source = tmp_path / "loader"
        source.write_bytes(b"MZ")
        mtools("mcopy", "-i", f"{disk}@@{start * 4096}", str(source), "::/EFI/BOOT/BOOTX64.EFI")
        efivars = EfiVars(tmp_path / "efivars")
        efivars.root.mkdir()
        (entry,) = install_uefi_boot(disk, efivars, arch="x64").entries
        drive = entry.option.device_path[0]
        assert drive == expected_drive(disk)
        assert isinstance(drive, HardDrive) and drive.size == 16 * MIB // 4096
        assert entry.option.device_path[1] == FilePath("\\EFI\\BOOT\\BOOTX64.EFI")
    finally:
        run("losetup", "-d", disk)


def test_the_named_esp_is_used_and_an_unknown_one_refused(tmp_path):
    disk = tmp_path / "disk.img"
    make_uefi_disk(disk, 32 * MIB, LOADERS)
    efivars = EfiVars(tmp_path)
    guid = sgdisk_partition(str(disk), 1)["guid"]
    done = install_uefi_boot(str(disk), efivars, esp_uuid=guid.upper(), arch="x64")
    assert done.esp.number == 1
    with pytest.raises(BadInput, match="no partition with UUID 00000000-"):
        install_uefi_boot(str(disk), efivars, esp_uuid=str(uuid.UUID(int=7)), arch="x64")


def test_without_efivars_the_machine_was_not_booted_in_uefi_mode(tmp_path):
    disk = tmp_path / "disk.img"
    make_uefi_disk(disk, 32 * MIB, LOADERS)
    with pytest.raises(Conflict, match="not booted in UEFI mode"):
        install_uefi_boot(str(disk), EfiVars(tmp_path / "absent"), arch="x64")


def test_images_that_cannot_boot_in_uefi_mode_are_clear_errors(tmp_path):
    efivars = EfiVars(tmp_path)
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(MIB))
    with pytest.raises(BadInput, match="has no partition table"):
        install_uefi_boot(str(blank), efivars, arch="x64")
    no_esp = tmp_path / "no-esp.img"
    no_esp.write_bytes(bytes(8 * MIB))
    run(need("sgdisk"), "-n1:2048:0", "-t1:8300", str(no_esp))
    with pytest.raises(BadInput, match=r"no EFI system partition \(GPT type C12A7328"):
        install_uefi_boot(str(no_esp), efivars, arch="x64")
    empty = tmp_path / "empty-esp.img"
    make_uefi_disk(empty, 32 * MIB, {"EFI/debian/readme.txt": b"no loader here"})
    with pytest.raises(BadInput, match="no boot loader on the EFI system partition"):
        install_uefi_boot(str(empty), efivars, arch="x64")
    assert list(tmp_path.glob("Boot*")) == []
