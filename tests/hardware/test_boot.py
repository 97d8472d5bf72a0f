import pytest

from hardware.boot import BootCollector, boot_mode, parse_bootif


@pytest.mark.parametrize(
    ("cmdline", "mac"),
    [
        ("BOOTIF=01-52-54-00-7a-c0-01 quiet", "52:54:00:7a:c0:01"),
        ("quiet BOOTIF=01-52-54-00-7A-C0-01", "52:54:00:7a:c0:01"),
        ("BOOTIF=52:54:00:7a:c0:21", "52:54:00:7a:c0:21"),
        ("BOOTIF=52-54-00-7a-c0-21", "52:54:00:7a:c0:21"),
        ('BOOTIF="01-aa-bb-cc-dd-ee-ff"', "aa:bb:cc:dd:ee:ff"),
        ("BOOTIF=01-aa-bb-cc-dd-ee-ff BOOTIF=01-11-22-33-44-55-66", "11:22:33:44:55:66"),
    ],
)
def test_bootif_forms(cmdline, mac):
    assert parse_bootif(cmdline) == mac


@pytest.mark.parametrize(
    "cmdline",
    [
        "",
        "quiet splash",
        "BOOTIF=",
        "BOOTIF=garbage",
        "BOOTIF=52-54-00-7a-c0",  # too short
        "BOOTIF=20-52-54-00-7a-c0-01-02",  # InfiniBand-like, not a 6-byte MAC
        "XBOOTIF=52:54:00:7a:c0:21",
    ],
)
def test_bootif_absent_or_invalid(cmdline):
    assert parse_bootif(cmdline) is None


def test_boot_mode_follows_efi_directory(tree):
    root = tree({"firmware/acpi": None})
    assert boot_mode(root) == "bios"
    (root / "firmware" / "efi").mkdir()
    assert boot_mode(root) == "uefi"
    boot = BootCollector(root, "BOOTIF=01-52-54-00-7a-c0-01").collect()
    assert boot.current_boot_mode == "uefi"
    assert boot.pxe_interface == "52:54:00:7a:c0:01"
