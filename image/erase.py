"""The ``erase_devices_metadata`` and ``erase_devices`` steps, never on the agent's own disks.

Metadata: each partition's first and last MiB (filesystem, LVM, md and swap signatures
live there), then ``wipefs --all --force`` on the disk (partition table signatures,
both GPT headers and the protective MBR), then the disk's first and last MiB, which
also covers tables wipefs does not know.

Erase: ``BLKDISCARD`` over the whole disk where the queue supports discard, else
``BLKZEROOUT`` (the kernel writes zeros, using WRITE ZEROES where the device has it),
else plain zero writes; in 64 MiB pieces so progress can be shown. Metadata is wiped
afterwards too, since a discard need not read back as zeros. NVMe format and ATA secure
erase are not implemented.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageError
from .partitions import SECTOR, parse_partition_table, read_head
from .writer import WIPE_BYTES, _pwrite_all, device_size, holds_mounts, mounted_devices

LOG = logging.getLogger(__name__)
BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F
PIECE = 64 * 1024 * 1024


class EraseError(ImageError):
    """A disk could not be erased."""


def base_disks(device: str, sys_class: Path) -> set[str]:
    """The whole disks a block device sits on (``dm-0`` -> its ``slaves``, ``sda2`` -> sda)."""
    name = Path(device).name
    node = sys_class / name
    if not node.exists():
        return {name}
    slaves = sorted((node / "slaves").glob("*")) if (node / "slaves").is_dir() else []
    if slaves:
        found: set[str] = set()
        for slave in slaves:
            found |= base_disks(slave.name, sys_class)
        return found
    if (node / "partition").exists():
        return {node.resolve().parent.name}
    return {name}


def agent_disks(mounts_text: str, sys_class: Path = Path("/sys/class/block")) -> set[str]:
    """Disk names (``sda``) under any mounted filesystem: the agent's own root, its
    tmp, anything it mounted. None of them may be erased."""
    found: set[str] = set()
    for device in mounted_devices(mounts_text):
        found |= base_disks(device, sys_class)
    return found


def erasable(
    disks: Iterable[str], mounts_text: str, sys_class: Path = Path("/sys/class/block")
) -> tuple[list[str], list[str]]:
    """(disks to erase, disks skipped because the agent uses them)."""
    mine = agent_disks(mounts_text, sys_class)
    mounted = mounted_devices(mounts_text)
    keep, skip = [], []
    for disk in disks:
        if Path(disk).name in mine or holds_mounts(disk, mounted):
            skip.append(disk)
        else:
            keep.append(disk)
    return keep, skip


def _zero(fd: int, offset: int, length: int) -> None:
    if length > 0:
        _pwrite_all(fd, bytes(length), offset)


def wipe_metadata(device: str) -> None:
    """Partition signatures, then wipefs, then the disk's ends (blocking)."""
    size = device_size(device)
    table = parse_partition_table(read_head(device))
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for partition in table.partitions if table else ():
            start = partition.first * SECTOR
            end = min((partition.last + 1) * SECTOR, size)
            if not 0 < start < end:
                continue
            span = min(WIPE_BYTES, end - start)
            _zero(fd, start, span)
            _zero(fd, max(start, end - span), span)
        os.fsync(fd)
    finally:
        os.close(fd)
    if shutil.which("wipefs") is None:
        raise EraseError("wipefs (util-linux) is needed to erase disk metadata")
    done = subprocess.run(
        ["wipefs", "--all", "--force", device], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise EraseError(f"wipefs {device} failed: {done.stderr.strip()[-500:]}")
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        span = min(WIPE_BYTES, size)
        _zero(fd, 0, span)
        _zero(fd, size - span, span)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class EraseProgress:
    device: str = ""
    method: str = ""
    done: int = 0
    total: int = 0


def _supports_discard(device: str, sys_class: Path) -> bool:
    try:
        text = (sys_class / Path(device).name / "queue" / "discard_max_bytes").read_text()
        return int(text.strip()) > 0
    except (OSError, ValueError):
        return False


def erase(
    device: str,
    progress: EraseProgress,
    sys_class: Path = Path("/sys/class/block"),
    cancelled: Callable[[], bool] = lambda: False,
) -> str:
    """Erase the whole device; returns the method used (blocking)."""
    size = device_size(device)
    progress.device, progress.total, progress.done = device, size, 0
    methods = ["discard"] if _supports_discard(device, sys_class) else []
    methods += ["zeroout", "write"]
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for method in methods:
            progress.method, progress.done = method, 0
            try:
                for offset in range(0, size, PIECE):
                    if cancelled():
                        raise EraseError(f"erasing {device} was interrupted")
                    length = min(PIECE, size - offset)
                    if method == "write":
                        _zero(fd, offset, length)
                    else:
                        request = BLKDISCARD if method == "discard" else BLKZEROOUT
                        fcntl.ioctl(fd, request, struct.pack("QQ", offset, length))
                    progress.done = offset + length
            except OSError as exc:
                LOG.info("%s: %s not possible (%s), trying the next way", device, method, exc)
                continue
            os.fsync(fd)
            break
    finally:
        os.close(fd)
    wipe_metadata(device)
    return progress.method
