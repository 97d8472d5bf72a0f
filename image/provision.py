"""Writing an image onto one disk: stream or convert it, verify, sync, add a configdrive.

Raw and compressed raw images stream onto the disk (:mod:`image.sink`), their format
checked from the first bytes before any byte reaches the disk; qcow2 goes through a
checked temp file and ``qemu-img convert`` (:mod:`image.qemu`). Which disk, and what a
failure means to whoever asked, is the caller's business: this module raises the
:mod:`image.errors` kinds and returns the partition UUIDs it found.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from .checksum import expected_checksum
from .configdrive import ConfigDriveError
from .configdrive import write as configdrive_write
from .download import Progress, download
from .errors import BadInput, Conflict, ImageError, with_outcome
from .formats import HEAD_BYTES, FormatError, check_permitted, check_qcow2, detect, parse_qcow2
from .partitions import parse_partition_table, partition_uuids, read_head
from .qemu import convert
from .sink import StreamSink
from .writer import (
    DiskWriter,
    ImageTooLarge,
    device_size,
    holds_mounts,
    mounted_devices,
    wipe_ends,
)

LOG = logging.getLogger(__name__)
# ironic's permitted_image_formats idea: only formats whose headers are inspected here.
PERMITTED_FORMATS = ("raw", "qcow2")
MOUNTS = Path("/proc/mounts")
SYS_BLOCK = Path("/sys/block")
SYS_CLASS = Path("/sys/class/block")
TMP_DIR = Path(tempfile.gettempdir())  # qcow2 downloads land here; room is checked
TMP_RESERVE = 64 * 1024 * 1024
BLKRRPART = 0x125F


class DiskInUse(Conflict):
    """The disk holds a mounted filesystem, or a device is built on it."""


def check_request(image_info: dict[str, Any]) -> None:
    """Refuse what the request alone shows is wrong (no URL, no usable checksum, a format
    that cannot be written), so the caller can answer before anything starts."""
    urls = image_info.get("urls")
    if not urls or not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise BadInput(f"image_info urls must be a non-empty list of URLs, not {urls!r}")
    expected_checksum(image_info)
    check_disk_format(image_info.get("disk_format"))


def check_disk_format(disk_format: Any) -> str | None:
    """The declared ``disk_format`` (None when absent), refused when it cannot be written.

    Known from the request alone, so a caller can refuse it before anything starts.
    """
    if disk_format is None or disk_format == "":
        return None
    if not isinstance(disk_format, str) or disk_format not in PERMITTED_FORMATS:
        raise FormatError(
            f"disk_format {disk_format!r} is not permitted "
            f"(permitted: {', '.join(PERMITTED_FORMATS)})"
        )
    return disk_format


def check_not_in_use(device: str, sys_block: Path = SYS_BLOCK) -> None:
    """Refuse a disk with a mounted filesystem, or one an LVM/dm/md device is built on."""
    try:
        mounts = MOUNTS.read_text()
    except OSError:
        mounts = ""
    if holds_mounts(device, mounted_devices(mounts)):
        raise DiskInUse(f"refusing to write to {device}: it holds a mounted filesystem")
    users = holders(device, sys_block)
    if users:
        raise DiskInUse(
            f"refusing to write to {device}: it is in use by {', '.join(users)} "
            "(LVM, device-mapper or md)"
        )


class ImageJob:
    """One image write onto ``device`` and what it has done so far (:meth:`status`).

    ``disk_format`` is what the request declared (see :func:`check_disk_format`);
    ``configdrive`` the decoded configdrive image to add after the image, if any.
    """

    def __init__(
        self,
        device: str,
        image_info: dict[str, Any],
        disk_format: str | None = None,
        configdrive: bytes | None = None,
    ) -> None:
        self.device = device
        self.image_info = image_info
        self.disk_format = check_disk_format(disk_format)
        self.configdrive = configdrive
        self.progress = Progress()
        self.sink: StreamSink | None = None
        self.stage = "download"
        self.converted = 0
        self.converting = False

    @property
    def touched(self) -> bool:
        """The device may hold part of this image (so a failure must wipe it)."""
        if self.converting:
            return True
        return self.sink is not None and self.sink.kind != "as-is" and self.sink.writer.started

    def status(self) -> dict[str, Any]:
        written = self.converted
        if not written and self.sink is not None and self.sink.kind != "as-is":
            written = self.sink.writer.written  # handed to the disk, not buffered
        return {
            "stage": self.stage,
            "device": self.device,
            "image_format": self.sink.kind if self.sink and self.sink.kind != "as-is" else None,
            "downloaded_bytes": self.progress.downloaded,
            "written_bytes": written,
            "total_bytes": self.progress.total,
            "rate_bytes_per_second": round(self.progress.rate, 1),
        }

    async def run(self) -> dict[str, Any]:
        """Write, verify and sync the image, then the configdrive; the partition UUIDs.

        A failure before the first byte reached the disk says the disk "was not
        touched"; after it, both ends of the disk are wiped (a half-written or
        unverified image must never boot as if good) and the message says so.
        """
        device = self.device
        try:
            if self.disk_format in (None, "raw"):
                await self._stream()
            else:
                await self._convert()
        except asyncio.CancelledError:
            if self.touched:  # the caller is stopping mid-write: leave nothing bootable
                wipe_ends(device)  # 2 MiB and an fsync; the writing threads are done
            raise
        except ImageError as exc:
            if not self.touched:
                raise with_outcome(exc, f"{device} was not touched") from None
            wipe_ends(device)
            raise with_outcome(exc, f"{device} was wiped") from None
        reread_partition_table(device)
        if self.configdrive is not None:
            self.stage = "configdrive"
            try:
                placed = await asyncio.get_running_loop().run_in_executor(
                    None, configdrive_write, device, self.configdrive
                )
            except ConfigDriveError as exc:
                raise ConfigDriveError(
                    f"image written, but the configdrive failed: {exc}"
                ) from None
            LOG.info("configdrive written to partition %d of %s", placed.partition, device)
            reread_partition_table(device)
        return partition_uuids(device, parse_partition_table(read_head(device)))

    async def _stream(self) -> None:
        """Raw or compressed raw: download, hash, decompress and write overlapped."""
        self.sink = StreamSink(
            DiskWriter(self.device), progress=self.progress, declared=self.disk_format
        )
        try:
            await download(self.image_info, self.sink, progress=self.progress)
            await self.sink.finish()
        finally:
            self.sink.close()

    async def _convert(self) -> None:
        """qcow2: to a temp file (room checked, its first bytes checked for qcow2 as they
        arrive), inspect the header, qemu-img convert."""
        TMP_DIR.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=TMP_DIR, prefix="tacet-image-")
        os.close(handle)
        temp = Path(name)
        try:
            free = shutil.disk_usage(TMP_DIR).free - TMP_RESERVE
            room = f"{TMP_DIR} has {max(free, 0)} bytes free for the download"
            writer = DiskWriter(temp, direct=False, limit=max(free, 0), room=room)
            self.sink = StreamSink(
                writer, progress=self.progress, inspect=False, declared=self.disk_format
            )
            try:
                await download(self.image_info, self.sink, progress=self.progress)
                await self.sink.finish()
            finally:
                self.sink.close()
            with open(temp, "rb") as source:
                head = source.read(HEAD_BYTES)
            kind = detect(head)
            check_permitted(kind, self.disk_format, PERMITTED_FORMATS)
            size = temp.stat().st_size
            if kind == "qcow2":
                info = parse_qcow2(head)
                check_qcow2(info)
                size = info.virtual_size
            target = device_size(self.device)
            if size > target:
                raise ImageTooLarge(
                    f"the image's virtual size ({size} bytes) is larger than "
                    f"{self.device} ({target} bytes)"
                )

            def on_percent(percent: float) -> None:
                self.converted = int(size * percent / 100)

            self.stage = "convert"
            self.converting = True
            await convert(temp, self.device, kind, on_percent)
            self.converted = size
        finally:
            temp.unlink(missing_ok=True)


def holders(device: str, sys_block: Path = SYS_BLOCK) -> list[str]:
    """Devices built on ``device`` or its partitions (/sys/block/X/holders, X/Xn/holders)."""
    base = sys_block / Path(device).name
    found: list[str] = []
    for directory in [base, *base.glob(f"{base.name}*")]:
        try:
            found.extend(sorted(entry.name for entry in (directory / "holders").iterdir()))
        except OSError:
            continue
    return found


def reread_partition_table(device: str) -> None:
    """Ask the kernel to re-read the table (BLKRRPART) so partition nodes appear."""
    try:
        if not stat.S_ISBLK(os.stat(device).st_mode):
            return  # an image file in tests: nothing to re-read
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, BLKRRPART)
        finally:
            os.close(fd)
    except OSError as exc:
        LOG.warning("could not re-read the partition table of %s: %s", device, exc)
