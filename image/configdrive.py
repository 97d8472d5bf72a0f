"""Writing a configdrive to a partition at the end of the deployed disk, as ironic does.

The configdrive is a gzip-compressed, base64-encoded ISO 9660 (or vfat) image labelled
``config-2``, or the URL of one. It goes into a partition already labelled
``config-2`` in the image when there is one, else into a new 64 MiB partition at the end
of the disk: on GPT the backup header is first moved to the disk's end (``sgdisk -e``,
the image was smaller than the disk) and the partition added with ``sgdisk``; on MBR
it is appended with ``sfdisk`` when a primary slot is free. The data is written by
offset on the whole disk, so no partition device node is needed.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import os
import shutil
import subprocess
import zlib
from dataclasses import dataclass

from .errors import ImageError
from .partitions import SECTOR, Partition, PartitionTable, parse_partition_table, read_head
from .writer import _pwrite_all, device_size

MAX_SIZE = 64 * 1024 * 1024
PARTITION_BYTES = 64 * 1024 * 1024
LABEL = b"config-2"
MBR_LIMIT = 2 * 1024**4  # MBR cannot address past 2 TiB


class ConfigDriveError(ImageError):
    """The configdrive is malformed or cannot be placed on the disk."""


def decode(given: str | bytes) -> bytes:
    """base64 -> (gunzip) -> the image; at most 64 MiB either way. Bytes fetched from a
    URL may also be the gzipped or plain image itself."""
    try:
        data = base64.b64decode(given.strip(), validate=True)
    except (binascii.Error, ValueError):
        if isinstance(given, str):
            raise ConfigDriveError("configdrive must be base64 encoded (gzipped ISO)") from None
        data = given
    if data[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(wbits=31)
        try:
            data = inflater.decompress(data, MAX_SIZE + 1)
        except zlib.error as exc:
            raise ConfigDriveError(f"configdrive gzip data is corrupt: {exc}") from None
        if len(data) <= MAX_SIZE and not inflater.eof:
            raise ConfigDriveError("configdrive gzip data is truncated")
    if len(data) > MAX_SIZE:
        raise ConfigDriveError(f"configdrive is larger than {MAX_SIZE // 1024 // 1024} MiB")
    check_label(data)
    return data


def label_of(data: bytes) -> bytes | None:
    """The ISO 9660 volume id or vfat volume label, or None."""
    if data[0x8001:0x8006] == b"CD001":
        return data[0x8028 : 0x8028 + 32].rstrip(b" \0")
    if data[510:512] == b"\x55\xaa":
        if data[0x52:0x5A] == b"FAT32   ":
            return data[0x47 : 0x47 + 11].rstrip(b" ")
        if data[0x36:0x3B] in (b"FAT12", b"FAT16"):
            return data[0x2B : 0x2B + 11].rstrip(b" ")
    return None


def check_label(data: bytes) -> None:
    label = label_of(data)
    if label is None or label.lower() != LABEL:
        raise ConfigDriveError(
            f"configdrive is not an ISO 9660 or vfat image labelled config-2 (label {label!r})"
        )


@dataclass(frozen=True)
class Placement:
    partition: int
    first: int  # sector
    sectors: int
    created: bool


def existing_partition(device: str, table: PartitionTable) -> Partition | None:
    """A partition of the written image that already holds a config-2 filesystem."""
    with open(device, "rb") as handle:
        for partition in table.partitions:
            handle.seek(partition.first * SECTOR)
            label = label_of(handle.read(0x8000 + 64))
            if label is not None and label.lower() == LABEL:
                return partition
    return None


def place(device: str, size: int) -> Placement:
    """Find or make the partition for the configdrive (blocking: tools run here)."""
    table = parse_partition_table(read_head(device))
    if table is None:
        raise ConfigDriveError(f"{device} has no partition table to add a configdrive to")
    found = existing_partition(device, table)
    if found is not None:
        sectors = found.last - found.first + 1
        if sectors * SECTOR < size:
            raise ConfigDriveError(f"the image's config-2 partition is smaller than {size} bytes")
        return Placement(found.number, found.first, sectors, False)
    before = {p.number for p in table.partitions}
    if table.kind == "gpt":
        _tool("sgdisk", "-e", device)
        _tool(
            "sgdisk", "-n", f"0:-{PARTITION_BYTES // 1024 // 1024}M:0", "-c", "0:config-2", device
        )
    else:
        _add_mbr_partition(device, table)
    after = parse_partition_table(read_head(device))
    new = [p for p in (after.partitions if after else ()) if p.number not in before]
    if len(new) != 1:
        raise ConfigDriveError(f"could not add a configdrive partition to {device}")
    partition = new[0]
    sectors = partition.last - partition.first + 1
    if sectors * SECTOR < size:
        raise ConfigDriveError("the new configdrive partition is too small")
    return Placement(partition.number, partition.first, sectors, True)


def _add_mbr_partition(device: str, table: PartitionTable) -> None:
    if len(table.partitions) >= 4:
        raise ConfigDriveError("a configdrive needs a free primary partition; the MBR has none")
    disk_bytes = device_size(device)
    if disk_bytes > MBR_LIMIT:
        raise ConfigDriveError("a configdrive cannot go past 2 TiB on an MBR disk")
    end = min(disk_bytes, MBR_LIMIT) // SECTOR
    start = (end - PARTITION_BYTES // SECTOR) // 2048 * 2048
    if any(p.last >= start for p in table.partitions):
        raise ConfigDriveError("no free space at the end of the disk for a configdrive")
    script = f"{start},{end - start},83\n"
    _tool("sfdisk", "--append", "--no-reread", "--no-tell-kernel", device, stdin=script)


def _tool(*command: str, stdin: str | None = None) -> None:
    if shutil.which(command[0]) is None:
        raise ConfigDriveError(f"{command[0]} is needed to add a configdrive partition")
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ConfigDriveError(
            f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}"
        )


def write(device: str, data: bytes) -> Placement:
    """Place and write the configdrive (padded with zeros to a whole MiB), then sync."""
    placement = place(device, len(data))
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        padded = data + bytes(-len(data) % (1024 * 1024))
        padded = padded[: placement.sectors * SECTOR]
        _pwrite_all(fd, padded, placement.first * SECTOR)
        os.fsync(fd)
    finally:
        os.close(fd)
    return placement


def gzip_b64(data: bytes) -> str:
    """The wire form of a configdrive (used by tests and tools)."""
    return base64.b64encode(gzip.compress(data)).decode("ascii")
