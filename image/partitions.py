"""Reading a disk's partition table (GPT or MBR) to report the UUIDs ironic asks for.

A pure parser over the first megabyte of the disk: no ``blkid`` or ``sfdisk`` needed,
and no dependence on the kernel having re-read the table yet.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass

SECTOR = 512
HEAD_BYTES = 1024 * 1024
ESP_GPT_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
ESP_MBR_TYPE = 0xEF
GPT_PROTECTIVE = 0xEE


@dataclass(frozen=True)
class Partition:
    number: int
    uuid: str  # GPT unique partition GUID, or "<disk id>-<nn>" for MBR (as blkid)
    is_esp: bool
    first: int = 0  # first and last sector (inclusive)
    last: int = 0


@dataclass(frozen=True)
class PartitionTable:
    kind: str  # "gpt" or "dos"
    disk_id: str  # GPT disk GUID, or the MBR disk signature as 8 hex digits
    partitions: tuple[Partition, ...]


def parse_partition_table(head: bytes, sector: int = SECTOR) -> PartitionTable | None:
    """The table at the start of a disk image or device, or None when there is none."""
    if len(head) < 2 * sector or head[510:512] != b"\x55\xaa":
        return None
    mbr_types = [head[446 + 16 * i + 4] for i in range(4)]
    if GPT_PROTECTIVE in mbr_types:
        return _parse_gpt(head, sector)
    signature = struct.unpack_from("<I", head, 440)[0]
    disk_id = f"{signature:08x}"
    partitions = []
    for i, kind in enumerate(mbr_types):
        if kind == 0:
            continue
        start, count = struct.unpack_from("<II", head, 446 + 16 * i + 8)
        partitions.append(
            Partition(
                i + 1, f"{disk_id}-{i + 1:02x}", kind == ESP_MBR_TYPE, start, start + count - 1
            )
        )
    return PartitionTable("dos", disk_id, tuple(partitions))


def _parse_gpt(head: bytes, sector: int) -> PartitionTable | None:
    header = head[sector : 2 * sector]
    if header[:8] != b"EFI PART":
        return None
    size = struct.unpack_from("<I", header, 12)[0]
    if not 92 <= size <= sector:
        return None
    stored_crc = struct.unpack_from("<I", header, 16)[0]
    blank = header[:16] + b"\0\0\0\0" + header[20:size]
    if zlib.crc32(blank) != stored_crc:
        return None  # a damaged primary header: do not report made-up UUIDs
    disk_guid = uuid.UUID(bytes_le=bytes(header[56:72]))
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    start = entries_lba * sector
    end = start + count * entry_size
    if entry_size < 128 or end > len(head):
        return None
    partitions = []
    for index in range(count):
        entry = head[start + index * entry_size : start + (index + 1) * entry_size]
        type_guid = uuid.UUID(bytes_le=bytes(entry[:16]))
        if type_guid.int == 0:
            continue
        unique = uuid.UUID(bytes_le=bytes(entry[16:32]))
        first, last = struct.unpack_from("<QQ", entry, 32)
        partitions.append(Partition(index + 1, str(unique), type_guid == ESP_GPT_TYPE, first, last))
    return PartitionTable("gpt", str(disk_guid), tuple(partitions))


def partition_device(disk: str, number: int) -> str:
    """``/dev/sda`` + 1 -> ``/dev/sda1``; ``/dev/nvme0n1`` + 1 -> ``/dev/nvme0n1p1``."""
    return f"{disk}p{number}" if disk[-1:].isdigit() else f"{disk}{number}"


def partition_uuids(disk: str, table: PartitionTable | None) -> dict[str, object]:
    """``standby.get_partition_uuids``' shape (keys with spaces, as ironic reads them)."""
    if table is None:
        return {"root uuid": None, "efi system partition uuid": None, "partitions": {}}
    esp = next((p.uuid for p in table.partitions if p.is_esp), None)
    return {
        "root uuid": table.disk_id,
        "efi system partition uuid": esp,
        "partitions": {partition_device(disk, p.number): p.uuid for p in table.partitions},
    }


def read_head(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(HEAD_BYTES)
