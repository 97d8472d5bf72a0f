"""The EFI_LOAD_OPTION codec against the specification's byte layout, efibootmgr's reading
of the variables written, and BootOrder handling in an efivarfs-like directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from image.efi import (
    EFI_GLOBAL_VARIABLE,
    EfiVarError,
    EfiVars,
    FilePath,
    HardDrive,
    OtherNode,
    decode_boot_order,
    decode_load_option,
    encode_boot_order,
    encode_load_option,
    ensure_first,
    loader_option,
)

ESP_GUID = uuid.UUID("5986f7ba-e017-46ee-9b66-0c4b635ed35c")
# The same GUID in the mixed-endian order UEFI stores it (first three fields little-endian).
ESP_GUID_BYTES = bytes.fromhex("baf7865917e0ee469b660c4b635ed35c")
LOADER = "\\EFI\\debian\\shimx64.efi"
DRIVE = HardDrive(number=1, start=0x800, size=0x14000, signature=ESP_GUID)


def ucs2z(text: str) -> bytes:
    return text.encode("utf-16-le") + b"\0\0"


def spec_hd_gpt() -> bytes:
    """UEFI 2.10, 10.3.5.1 Hard Drive Media Device Path, laid out field by field."""
    return (
        bytes.fromhex("04012a00")  # Type 4 Media, SubType 1 Hard Drive, Length 42
        + bytes.fromhex("01000000")  # PartitionNumber 1
        + bytes.fromhex("0008000000000000")  # PartitionStart 0x800
        + bytes.fromhex("0040010000000000")  # PartitionSize 0x14000
        + ESP_GUID_BYTES  # PartitionSignature
        + bytes.fromhex("02")  # PartitionFormat: GUID partition table
        + bytes.fromhex("02")  # SignatureType: GUID
    )


def spec_file(path: str) -> bytes:
    """10.3.5.4 File Path Media Device Path: Type 4, SubType 4, Length, null-terminated."""
    name = ucs2z(path)
    return bytes([0x04, 0x04]) + (4 + len(name)).to_bytes(2, "little") + name


END = bytes.fromhex("7fff0400")  # End Entire Device Path


def option_bytes(attributes: int, description: str, path: bytes, data: bytes = b"") -> bytes:
    """EFI_LOAD_OPTION (3.1.3): Attributes, FilePathListLength, Description, path, data."""
    return (
        attributes.to_bytes(4, "little")
        + len(path).to_bytes(2, "little")
        + ucs2z(description)
        + path
        + data
    )


def test_a_gpt_entry_has_the_specifications_layout():
    path = spec_hd_gpt() + spec_file(LOADER) + END
    assert len(path) == 42 + 52 + 4
    expected = (
        bytes.fromhex("01000000")  # Attributes: LOAD_OPTION_ACTIVE
        + bytes.fromhex("6200")  # FilePathListLength: 98
        + bytes.fromhex("640065006200690061006e000000")  # Description "debian"
        + path
    )
    option = loader_option("debian", DRIVE, FilePath(LOADER))
    assert encode_load_option(option) == expected
    assert decode_load_option(expected) == option


def test_an_mbr_entry_carries_the_disk_signature():
    drive = HardDrive(number=2, start=2048, size=1024, signature=0x1234ABCD)
    expected_node = (
        bytes.fromhex("04012a00")
        + bytes.fromhex("02000000")
        + (2048).to_bytes(8, "little")
        + (1024).to_bytes(8, "little")
        + bytes.fromhex("cdab3412")
        + bytes(12)  # the MBR signature fills the first 4 of the 16 bytes
        + bytes.fromhex("01")  # PartitionFormat: PC-AT MBR
        + bytes.fromhex("01")  # SignatureType: 32-bit MBR signature
    )
    encoded = encode_load_option(loader_option("os", drive, FilePath("\\EFI\\os\\x.efi")))
    assert expected_node in encoded
    assert decode_load_option(encoded).device_path[0] == drive


def test_an_ovmf_entry_decodes_and_reencodes_to_the_same_bytes():
    # "UiApp" as OVMF makes it: FvVol(7cb8bdc9-...)/FvFile(462caa21-...), no HD node.
    fv = bytes.fromhex("04071400") + uuid.UUID("7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1").bytes_le
    file = bytes.fromhex("04061400") + uuid.UUID("462caa21-7614-4503-836e-8ab6f4662331").bytes_le
    path = fv + file + END
    raw = bytes.fromhex("09010000") + len(path).to_bytes(2, "little") + ucs2z("UiApp") + path
    option = decode_load_option(raw)
    assert option.description == "UiApp"
    assert option.attributes == 0x109
    assert [type(node) for node in option.device_path] == [OtherNode, OtherNode]
    assert encode_load_option(option) == raw


def test_optional_data_after_the_path_is_kept():
    path = spec_hd_gpt() + spec_file(LOADER) + END
    raw = bytes.fromhex("01000000620064000000") + path + b"\x01\x02\x03"
    option = decode_load_option(raw)
    assert option.description == "d"
    assert option.optional_data == b"\x01\x02\x03"
    assert encode_load_option(option) == raw


@pytest.mark.parametrize(
    "raw",
    [
        b"\x01\x00",  # too short
        bytes.fromhex("010000000400") + ucs2z("x")[:-2],  # description never ends
        bytes.fromhex("010000006000") + ucs2z("x") + END,  # path length past the end
        bytes.fromhex("010000000800") + ucs2z("x") + bytes.fromhex("04040200") + END,
    ],
)
def test_malformed_options_are_refused(raw):
    with pytest.raises(EfiVarError):
        decode_load_option(raw)


def test_boot_order_is_little_endian_16_bit():
    assert encode_boot_order((3, 0x1A, 0)) == bytes.fromhex("03001a000000")
    assert decode_boot_order(bytes.fromhex("03001a000000")) == (3, 0x1A, 0)
    with pytest.raises(EfiVarError):
        decode_boot_order(b"\x01")


def test_descriptions_outside_ucs2_are_refused():
    with pytest.raises(EfiVarError):
        encode_load_option(loader_option("boot \U0001f680", DRIVE, FilePath(LOADER)))


# -- the directory ---------------------------------------------------------------------
def var_file(root, name):
    return root / f"{name}-{EFI_GLOBAL_VARIABLE}"


def put(root, name, value, attributes=7):
    var_file(root, name).write_bytes(attributes.to_bytes(4, "little") + value)


def ovmf_like(root):
    """Variables as OVMF leaves them: UiApp, a disk entry it made itself, a shell."""
    fv = bytes.fromhex("04071400") + uuid.UUID("7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1").bytes_le
    file = bytes.fromhex("04061400") + uuid.UUID("462caa21-7614-4503-836e-8ab6f4662331").bytes_le
    uiapp = fv + file + END
    put(root, "Boot0000", option_bytes(0x109, "UiApp", uiapp))
    # PciRoot(0x0)/Pci(0x1,0x1)/Ata(0,0,0) plus OVMF's auto-created marker as data
    disk = (
        bytes.fromhex("02010c00d041030a00000000")
        + bytes.fromhex("010106000101")
        + bytes.fromhex("03010800000000 00")
        + END
    )
    marker = uuid.UUID("8108ac4e-9f11-4d59-850e-e21a522c59b2").bytes_le
    put(root, "Boot0001", option_bytes(1, "UEFI QEMU HARDDISK QM00001 ", disk, marker))
    put(root, "Boot0002", option_bytes(1, "EFI Internal Shell", END))
    put(root, "BootOrder", encode_boot_order((1, 0, 2)))
    put(root, "BootCurrent", encode_boot_order((1,)), attributes=6)
    put(root, "Timeout", b"\x00\x00")


def snapshot(root):
    return {path.name: path.read_bytes() for path in root.iterdir()}


def test_a_new_entry_goes_first_and_everything_else_stays(tmp_path):
    ovmf_like(tmp_path)
    before = snapshot(tmp_path)
    efivars = EfiVars(tmp_path)
    (entry,) = ensure_first(efivars, [loader_option("debian", DRIVE, FilePath(LOADER))])
    assert entry.created and entry.number == 3
    after = snapshot(tmp_path)
    changed = {name for name in after if before.get(name) != after[name]}
    assert changed == {f"Boot0003-{EFI_GLOBAL_VARIABLE}", f"BootOrder-{EFI_GLOBAL_VARIABLE}"}
    order = after[f"BootOrder-{EFI_GLOBAL_VARIABLE}"]
    assert order == bytes.fromhex("07000000 0300 0100 0000 0200")
    raw = after[f"Boot0003-{EFI_GLOBAL_VARIABLE}"]
    assert raw[:4] == bytes.fromhex("07000000")  # non-volatile, boot and runtime access
    assert (
        raw[4:]
        == bytes.fromhex("010000006200") + ucs2z("debian") + spec_hd_gpt() + spec_file(LOADER) + END
    )


def test_calling_again_changes_nothing(tmp_path):
    ovmf_like(tmp_path)
    efivars = EfiVars(tmp_path)
    wanted = [
        loader_option("debian", DRIVE, FilePath(LOADER)),
        loader_option("fallback", DRIVE, FilePath("\\EFI\\BOOT\\BOOTX64.EFI")),
    ]
    first = ensure_first(efivars, wanted)
    once = snapshot(tmp_path)
    second = ensure_first(efivars, wanted)
    assert snapshot(tmp_path) == once
    assert [e.number for e in first] == [e.number for e in second] == [3, 4]
    assert [e.created for e in second] == [False, False]
    assert efivars.boot_order() == (3, 4, 1, 0, 2)


def test_an_entry_to_the_same_loader_is_reused_whatever_its_form(tmp_path):
    # A long-form path (PciRoot/.../HD/File) with another name and the file name's case
    # differing: the same loader on the same partition, so no second entry is made.
    pci = bytes.fromhex("02010c00d041030a00000000")
    path = pci + spec_hd_gpt() + spec_file(LOADER.upper()) + END
    put(tmp_path, "Boot0005", option_bytes(0, "Debian", path))
    put(tmp_path, "BootOrder", encode_boot_order((5,)))
    efivars = EfiVars(tmp_path)
    (entry,) = ensure_first(efivars, [loader_option("debian", DRIVE, FilePath(LOADER))])
    assert (entry.number, entry.created, entry.option.description) == (5, False, "Debian")
    reread = efivars.boot_options()[5]
    assert reread is not None and reread.active  # it was inactive: now active
    assert (
        reread.device_path
        == decode_load_option(var_file(tmp_path, "Boot0005").read_bytes()[4:]).device_path
    )
    assert set(efivars.boot_numbers()) == {5}


def test_numbers_named_in_boot_order_are_not_reused_and_order_is_created(tmp_path):
    efivars = EfiVars(tmp_path)
    put(tmp_path, "BootOrder", encode_boot_order((0, 1)))  # dangling: no Boot0000/0001
    (entry,) = ensure_first(efivars, [loader_option("debian", DRIVE, FilePath(LOADER))])
    assert entry.number == 2
    assert efivars.boot_order() == (2, 0, 1)
    var_file(tmp_path, "BootOrder").unlink()
    ensure_first(efivars, [loader_option("debian", DRIVE, FilePath(LOADER))])
    assert efivars.boot_order() == (2,)


def test_an_undecodable_entry_is_left_alone(tmp_path):
    put(tmp_path, "Boot0000", b"\x01\x00\x00")
    efivars = EfiVars(tmp_path)
    (entry,) = ensure_first(efivars, [loader_option("debian", DRIVE, FilePath(LOADER))])
    assert entry.number == 1
    assert var_file(tmp_path, "Boot0000").read_bytes() == bytes.fromhex("07000000010000")


def test_an_immutable_variable_file_is_made_writable(tmp_path):
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.fail("chattr (e2fsprogs) is required for this test")
    put(tmp_path, "BootOrder", encode_boot_order((0,)))
    path = var_file(tmp_path, "BootOrder")
    subprocess.run([chattr, "+i", str(path)], check=True)
    try:
        with pytest.raises(PermissionError):
            os.open(path, os.O_WRONLY)  # what efivarfs does to a variable it protects
        EfiVars(tmp_path).write("BootOrder", encode_boot_order((1, 0)))
        assert path.read_bytes() == bytes.fromhex("07000000 0100 0000")
    finally:
        subprocess.run([chattr, "-i", str(path)], check=False)


def test_efibootmgr_reads_the_entries_as_written(tmp_path):
    efibootmgr = shutil.which("efibootmgr")
    if efibootmgr is None:
        pytest.fail("efibootmgr is required for this test (tools/setup installs it)")
    ovmf_like(tmp_path)
    mbr = HardDrive(number=1, start=2048, size=409600, signature=0xA1B2C3D4)
    ensure_first(
        EfiVars(tmp_path),
        [
            loader_option("debian", DRIVE, FilePath(LOADER)),
            loader_option("mbr os", mbr, FilePath("\\EFI\\BOOT\\BOOTX64.EFI")),
        ],
    )
    # libefivar reads another directory when told so; the trailing slash is needed
    env = dict(os.environ, EFIVARFS_PATH=f"{tmp_path}/")
    out = subprocess.run(
        [efibootmgr, "-v"], env=env, capture_output=True, text=True, check=True
    ).stdout
    lines = out.splitlines()
    assert "BootOrder: 0003,0004,0001,0000,0002" in lines
    assert (
        "Boot0003* debian\tHD(1,GPT,5986f7ba-e017-46ee-9b66-0c4b635ed35c,0x800,0x14000)"
        "/File(\\EFI\\debian\\shimx64.efi)" in lines
    )
    mbr_line = "Boot0004* mbr os\tHD(1,MBR,0xa1b2c3d4,0x800,0x64000)/File(\\EFI\\BOOT\\BOOTX64.EFI)"
    assert mbr_line in lines
    assert any(line.startswith("Boot0000* UiApp") for line in lines)
