"""UEFI boot entries for a whole-disk image already written: its ESP, its loaders, NVRAM.

A whole-disk image brings its own boot loaders; what the firmware still lacks is an
entry pointing at them. This finds the EFI system partition in the disk's partition
table, the loaders on it (:mod:`image.esp`), and makes them the first entries of
BootOrder (:mod:`image.efi`), leaving every other entry alone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import struct
import uuid
from dataclasses import dataclass

from .efi import BootEntry, EfiVarError, EfiVars, FilePath, HardDrive, ensure_first, loader_option
from .errors import BadInput, Conflict, ImageError
from .esp import FatReader, Loader, find_loaders, machine_arch
from .partitions import SECTOR, Partition, PartitionTable, parse_partition_table, read_head

LOG = logging.getLogger(__name__)
BLKSSZGET = 0x1268  # the logical block size of a block device


@dataclass(frozen=True)
class UefiBoot:
    disk: str
    esp: Partition
    loaders: tuple[Loader, ...]
    entries: tuple[BootEntry, ...]
    boot_order: tuple[int, ...]


def logical_block_size(disk: str) -> int:
    """The disk's logical block (LBA) size: the unit of GPT and of the HD device path."""
    fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not stat.S_ISBLK(os.fstat(fd).st_mode):
            return SECTOR  # a disk image file
        size: int = struct.unpack("<i", fcntl.ioctl(fd, BLKSSZGET, bytes(4)))[0]
        return size
    finally:
        os.close(fd)


def choose_esp(table: PartitionTable, esp_uuid: str | None) -> Partition:
    """The partition named by ``esp_uuid``, else the first one typed as an ESP."""
    if esp_uuid:
        for partition in table.partitions:
            if partition.uuid.lower() == esp_uuid.lower():
                return partition
        raise BadInput(f"no partition with UUID {esp_uuid} (efi_system_part_uuid) on the disk")
    for partition in table.partitions:
        if partition.is_esp:
            return partition
    kind = (
        "GPT type C12A7328-F81F-11D2-BA4B-00A0C93EC93B" if table.kind == "gpt" else "MBR type 0xEF"
    )
    raise BadInput(
        f"no EFI system partition ({kind}) on the disk: the image cannot boot in UEFI mode"
    )


def hard_drive(table: PartitionTable, esp: Partition) -> HardDrive:
    signature: uuid.UUID | int = (
        uuid.UUID(esp.uuid) if table.kind == "gpt" else int(table.disk_id, 16)
    )
    return HardDrive(esp.number, esp.first, esp.last - esp.first + 1, signature)


def install_uefi_boot(
    disk: str, efivars: EfiVars, esp_uuid: str | None = None, arch: str | None = None
) -> UefiBoot:
    """Boot entries for the loaders on ``disk``'s ESP, first in BootOrder.

    Raises :class:`Conflict` when ``efivars`` is not there (the machine was not booted
    in UEFI mode), :class:`BadInput` when the image has no usable ESP or loader.
    """
    if not efivars.root.is_dir():
        raise Conflict(
            f"no UEFI variables at {efivars.root}: this machine was not booted in UEFI mode"
        )
    sector = logical_block_size(disk)
    try:
        table = parse_partition_table(read_head(disk), sector)
    except OSError as exc:
        raise ImageError(f"cannot read {disk}: {exc}") from None
    if table is None:
        raise BadInput(f"{disk} has no partition table: the image cannot boot in UEFI mode")
    esp = choose_esp(table, esp_uuid)
    fat = FatReader(disk, esp.first * sector)
    loaders = find_loaders(fat.files(), fat.read, arch or machine_arch())
    if not loaders:
        raise BadInput(
            f"no boot loader on the EFI system partition ({disk} partition {esp.number}): "
            "looked for EFI/<vendor>/ BOOT<ARCH>.CSV, shim, grub or a single .efi, "
            "and EFI/BOOT/BOOT<ARCH>.EFI"
        )
    drive = hard_drive(table, esp)
    options = [loader_option(x.label, drive, FilePath(x.efi_path)) for x in loaders]
    try:
        entries = ensure_first(efivars, options)
        order = efivars.boot_order()
    except (OSError, EfiVarError) as exc:
        raise ImageError(f"cannot set UEFI boot entries in {efivars.root}: {exc}") from None
    for entry, loader in zip(entries, loaders, strict=True):
        LOG.warning(
            "UEFI boot entry Boot%04X %s %r -> %s on %s partition %d",
            entry.number,
            "created" if entry.created else "reused",
            entry.option.description,
            loader.efi_path,
            disk,
            esp.number,
        )
    return UefiBoot(disk, esp, tuple(loaders), tuple(entries), order)
