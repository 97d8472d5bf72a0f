"""Partition table parsing, cross-checked with util-linux's blkid on images built here."""

from __future__ import annotations

import shutil
import struct
import subprocess
import uuid
import zlib

import pytest

from image.partitions import parse_partition_table, partition_device, partition_uuids

ESP = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
LINUX = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
SECTORS = 8192  # a 4 MiB image


def gpt_image(disk_guid, parts):
    """A GPT disk image per the UEFI spec: protective MBR, header, 128 entries."""
    image = bytearray(SECTORS * 512)
    image[446 + 4] = 0xEE
    struct.pack_into("<II", image, 446 + 8, 1, SECTORS - 1)
    image[510:512] = b"\x55\xaa"
    entries = bytearray(128 * 128)
    for i, (type_guid, unique, first, last) in enumerate(parts):
        struct.pack_into(
            "<16s16sQQ", entries, i * 128, type_guid.bytes_le, unique.bytes_le, first, last
        )
    header = bytearray(92)
    struct.pack_into("<8sII", header, 0, b"EFI PART", 0x00010000, 92)
    struct.pack_into("<QQQQ", header, 24, 1, SECTORS - 1, 34, SECTORS - 34)
    header[56:72] = disk_guid.bytes_le
    struct.pack_into("<QIII", header, 72, 2, 128, 128, zlib.crc32(entries))
    struct.pack_into("<I", header, 16, zlib.crc32(header))
    image[512 : 512 + 92] = header
    image[1024 : 1024 + len(entries)] = entries
    return bytes(image)


def mbr_image(signature, types):
    image = bytearray(SECTORS * 512)
    struct.pack_into("<I", image, 440, signature)
    for i, kind in enumerate(types):
        image[446 + 16 * i + 4] = kind
        struct.pack_into("<II", image, 446 + 16 * i + 8, 2048 * (i + 1), 2048)
    image[510:512] = b"\x55\xaa"
    return bytes(image)


def blkid(path):
    done = subprocess.run(
        ["blkid", "-p", "-o", "export", str(path)], capture_output=True, text=True, check=True
    )
    return dict(line.split("=", 1) for line in done.stdout.split())


DISK = uuid.UUID("7ac0d5a4-0b1e-4a36-9b3e-1d2c3b4a5f60")
P1, P2 = (
    uuid.UUID("11111111-2222-4333-8444-555555555555"),
    uuid.UUID("66666666-7777-4888-9999-aaaaaaaaaaaa"),
)


def test_gpt(tmp_path):
    image = gpt_image(DISK, [(ESP, P1, 2048, 4095), (LINUX, P2, 4096, SECTORS - 35)])
    table = parse_partition_table(image)
    assert table.kind == "gpt" and table.disk_id == str(DISK)
    assert [(p.number, p.uuid, p.is_esp) for p in table.partitions] == [
        (1, str(P1), True),
        (2, str(P2), False),
    ]
    assert partition_uuids("/dev/nvme0n1", table) == {
        "root uuid": str(DISK),
        "efi system partition uuid": str(P1),
        "partitions": {"/dev/nvme0n1p1": str(P1), "/dev/nvme0n1p2": str(P2)},
    }
    if shutil.which("blkid"):
        path = tmp_path / "gpt.img"
        path.write_bytes(image)
        found = blkid(path)
        assert found["PTTYPE"] == "gpt" and found["PTUUID"] == table.disk_id


def test_mbr(tmp_path):
    image = mbr_image(0x1A2B3C4D, [0x83, 0xEF])
    table = parse_partition_table(image)
    assert table.kind == "dos" and table.disk_id == "1a2b3c4d"
    assert [p.is_esp for p in table.partitions] == [False, True]
    assert partition_uuids("/dev/sda", table)["partitions"] == {
        "/dev/sda1": "1a2b3c4d-01",
        "/dev/sda2": "1a2b3c4d-02",
    }
    if shutil.which("blkid"):
        path = tmp_path / "mbr.img"
        path.write_bytes(image)
        found = blkid(path)
        assert found["PTTYPE"] == "dos" and found["PTUUID"] == table.disk_id


@pytest.mark.parametrize("damage", ["no-signature", "bad-crc", "short"])
def test_damaged_or_missing_tables_give_none(damage):
    image = bytearray(gpt_image(DISK, [(LINUX, P1, 2048, 4095)]))
    if damage == "no-signature":
        image[510:512] = b"\0\0"
    elif damage == "bad-crc":
        image[512 + 60] ^= 0xFF  # flip a byte of the disk GUID
    else:
        image = image[:600]
    assert parse_partition_table(bytes(image)) is None
    assert partition_uuids("/dev/sda", None)["root uuid"] is None


def test_partition_device_names():
    assert partition_device("/dev/sda", 3) == "/dev/sda3"
    assert partition_device("/dev/nvme0n1", 1) == "/dev/nvme0n1p1"
    assert partition_device("/dev/mmcblk0", 2) == "/dev/mmcblk0p2"
