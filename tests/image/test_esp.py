"""Which loaders get boot entries (the rule, pure), and reading a real FAT ESP with mtools."""

from __future__ import annotations

import pytest

from image.errors import BadInput
from image.esp import FALLBACK_LABEL, FatReader, Loader, find_loaders, parse_boot_csv
from tests.image.conftest import ESP_OFFSET, MIB, make_gpt_image, make_uefi_disk

SHIM_CSV = "shimx64.efi,debian,,This is the boot entry for debian\n".encode("utf-16")


def loaders(files: dict[str, bytes], arch: str = "x64") -> list[Loader]:
    return find_loaders(list(files), files.__getitem__, arch)


def test_a_vendor_csv_comes_first_and_names_the_entry():
    files = {
        "EFI/debian/BOOTX64.CSV": "shimx64.efi,Debian GNU/Linux,,x\n".encode("utf-16"),
        "EFI/debian/shimx64.efi": b"",
        "EFI/debian/grubx64.efi": b"",
        "EFI/BOOT/BOOTX64.EFI": b"",
    }
    assert loaders(files) == [Loader("EFI/debian/shimx64.efi", "Debian GNU/Linux")]


def test_every_csv_line_with_a_present_loader_gives_an_entry():
    csv = "shimx64.efi,one,,a\r\nmissing.efi,gone,,b\r\ngrubx64.efi,two,,c\r\n"
    files = {
        "EFI/centos/BOOTX64.CSV": csv.encode("utf-16-le"),  # no BOM
        "EFI/centos/shimx64.efi": b"",
        "EFI/centos/grubx64.efi": b"",
    }
    assert loaders(files) == [
        Loader("EFI/centos/shimx64.efi", "one"),
        Loader("EFI/centos/grubx64.efi", "two"),
    ]


def test_shim_then_grub_then_a_single_efi_and_names_ignore_case():
    assert loaders({"efi/Fedora/SHIMX64.EFI": b"", "efi/Fedora/grubx64.efi": b""}) == [
        Loader("efi/Fedora/SHIMX64.EFI", "Fedora")
    ]
    assert loaders({"EFI/ubuntu/grubx64.efi": b"", "EFI/ubuntu/mmx64.efi": b""}) == [
        Loader("EFI/ubuntu/grubx64.efi", "ubuntu")
    ]
    assert loaders({"EFI/arch/systemd-bootx64.efi": b"", "EFI/arch/fbx64.efi": b""}) == [
        Loader("EFI/arch/systemd-bootx64.efi", "arch")
    ]


def test_several_vendors_in_name_order_and_an_ambiguous_one_gives_nothing():
    files = {
        "EFI/zeta/grubx64.efi": b"",
        "EFI/Alpha/only.efi": b"",
        "EFI/many/a.efi": b"",
        "EFI/many/b.efi": b"",
        "EFI/BOOT/BOOTX64.EFI": b"",
    }
    assert loaders(files) == [
        Loader("EFI/Alpha/only.efi", "Alpha"),
        Loader("EFI/zeta/grubx64.efi", "zeta"),
    ]


def test_the_removable_path_only_when_no_vendor_gives_a_loader():
    assert loaders({"EFI/BOOT/BOOTX64.EFI": b"", "EFI/BOOT/grubx64.efi": b""}) == [
        Loader("EFI/BOOT/BOOTX64.EFI", FALLBACK_LABEL)
    ]
    assert loaders({"EFI/BOOT/BOOTAA64.EFI": b""}, arch="aa64")[0].efi_path == (
        "\\EFI\\BOOT\\BOOTAA64.EFI"
    )
    assert loaders({"EFI/BOOT/BOOTAA64.EFI": b"", "EFI/debian/readme.txt": b""}) == []


def test_files_deeper_or_outside_efi_do_not_count():
    assert loaders({"EFI/debian/sub/grubx64.efi": b"", "boot/grubx64.efi": b""}) == []


def test_a_csv_naming_no_present_loader_falls_back_to_the_directory_rule():
    files = {"EFI/debian/BOOTX64.CSV": SHIM_CSV, "EFI/debian/grubx64.efi": b""}
    assert loaders(files) == [Loader("EFI/debian/grubx64.efi", "debian")]


def test_csv_parsing():
    assert parse_boot_csv(SHIM_CSV) == [("shimx64.efi", "debian")]
    assert parse_boot_csv("a.efi,A\nnolabel.efi\n\n".encode("utf-16")) == [("a.efi", "A")]
    assert parse_boot_csv(b"") == []
    assert parse_boot_csv(b"\xfe\xff" + "x.efi,X\n".encode("utf-16-be")) == [("x.efi", "X")]


# -- a real FAT file system ------------------------------------------------------------
def test_reading_a_fat_esp_inside_a_gpt_disk_image(tmp_path):
    disk = tmp_path / "disk.img"
    make_uefi_disk(
        disk,
        32 * MIB,
        {
            "EFI/debian/BOOTX64.CSV": SHIM_CSV,
            "EFI/debian/shimx64.efi": b"MZ shim",
            "EFI/debian/grubx64.efi": b"MZ grub",
            "EFI/BOOT/BOOTX64.EFI": b"MZ fallback",
            "EFI/BOOT/fbx64.efi": b"MZ fb",
        },
    )
    fat = FatReader(str(disk), ESP_OFFSET)
    assert sorted(fat.files()) == [
        "EFI/BOOT/BOOTX64.EFI",
        "EFI/BOOT/fbx64.efi",
        "EFI/debian/BOOTX64.CSV",
        "EFI/debian/grubx64.efi",
        "EFI/debian/shimx64.efi",
    ]
    assert fat.read("EFI/debian/BOOTX64.CSV") == SHIM_CSV
    assert find_loaders(fat.files(), fat.read, "x64") == [
        Loader("EFI/debian/shimx64.efi", "debian")
    ]


def test_a_partition_without_fat_is_a_clear_error(tmp_path):
    disk = tmp_path / "disk.img"
    make_gpt_image(disk, 32 * MIB)  # the ESP partition exists but was never formatted
    with pytest.raises(BadInput, match="cannot read the EFI system partition as FAT"):
        FatReader(str(disk), ESP_OFFSET).files()
