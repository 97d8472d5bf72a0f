"""``standby.prepare_image``: pick the target disk, stream the image onto it, verify, sync.

Raw and compressed raw images stream onto the disk (:mod:`image.sink`); qcow2 goes
through a checked temp file and ``qemu-img convert`` (:mod:`image.qemu`).
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
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent.commands import CommandError, InvalidCommandParamsError, report_progress
from hardware.hints import HintError, NoMatchingDisk, select_root_device
from hardware.model import Disk

from .checksum import ChecksumMismatch, ImageError
from .configdrive import MAX_SIZE, ConfigDriveError
from .configdrive import decode as decode_configdrive
from .configdrive import write as configdrive_write
from .download import Progress, download, fetch_small
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

if TYPE_CHECKING:
    from agent.core import Agent

LOG = logging.getLogger(__name__)
# ironic's permitted_image_formats idea: only formats whose headers are inspected here.
PERMITTED_FORMATS = ("raw", "qcow2")
MOUNTS = Path("/proc/mounts")
SYS_BLOCK = Path("/sys/block")
SYS_CLASS = Path("/sys/class/block")
TMP_DIR = Path(tempfile.gettempdir())  # qcow2 downloads land here; room is checked
TMP_RESERVE = 64 * 1024 * 1024
BLKRRPART = 0x125F


class ImageWriteError(CommandError):
    code = 500


def root_device_hints(node_info: dict[str, Any] | None) -> dict[str, Any] | None:
    node = (node_info or {}).get("node") or {}
    for section in ("instance_info", "properties"):
        hints = (node.get(section) or {}).get("root_device")
        if hints:
            return dict(hints)
    return None


def choose_disk(inventory: dict[str, Any], node_info: dict[str, Any] | None) -> Disk:
    disks = [Disk(**disk) for disk in inventory.get("disks") or []]
    try:
        return select_root_device(disks, root_device_hints(node_info))
    except HintError as exc:
        raise InvalidCommandParamsError(f"root device hints: {exc}") from None
    except NoMatchingDisk as exc:
        raise ImageWriteError(str(exc), code=409) from None


async def write_image(
    agent: Agent,
    image_info: dict[str, Any],
    configdrive: str | None,
    node: dict[str, Any] | None = None,
) -> str:
    """Write the image; root-device hints come from ``node`` (a deploy step's) or the
    stored node_info."""
    disk_format = image_info.get("disk_format") or None
    if disk_format is not None and disk_format not in PERMITTED_FORMATS:
        raise InvalidCommandParamsError(
            f"disk_format {disk_format!r} is not permitted "
            f"(permitted: {', '.join(PERMITTED_FORMATS)})"
        )
    drive = await fetch_configdrive(configdrive, image_info) if configdrive else None
    inventory = await agent.inventory.get(refresh=True)
    disk = choose_disk(inventory, {"node": node} if node else agent.node_info)
    check_not_in_use(disk.name)
    LOG.warning("prepare_image: writing image %s to %s", image_info.get("id"), disk.name)
    job = ImageJob(disk.name)
    report_progress(job.status)
    try:
        if disk_format in (None, "raw"):
            await job.stream(image_info)
        else:
            await job.convert(image_info, disk_format)
    except asyncio.CancelledError:
        if job.touched:  # the agent is stopping mid-write: leave nothing bootable
            wipe_ends(disk.name)  # 2 MiB and an fsync; the writing threads are done
        raise
    except ImageError as exc:
        code = 400 if isinstance(exc, ChecksumMismatch | FormatError | ImageTooLarge) else 500
        if not job.touched:
            raise ImageWriteError(f"{exc}; {disk.name} was not touched", code=code) from None
        # Never leave a half-written or unverified image that could boot as if good.
        wipe_ends(disk.name)
        raise ImageWriteError(f"{exc}; {disk.name} was wiped", code=code) from None
    reread_partition_table(disk.name)
    if drive is not None:
        job.stage = "configdrive"
        try:
            placed = await asyncio.get_running_loop().run_in_executor(
                None, configdrive_write, disk.name, drive
            )
        except ConfigDriveError as exc:
            raise ImageWriteError(f"image written, but the configdrive failed: {exc}") from None
        LOG.info("configdrive written to partition %d of %s", placed.partition, disk.name)
        reread_partition_table(disk.name)
    uuids = partition_uuids(disk.name, parse_partition_table(read_head(disk.name)))
    agent.partition_uuids = uuids
    return (
        f"image ({image_info.get('id')}) written to device {disk.name} "
        f"root_uuid={uuids['root uuid']}"
    )


async def fetch_configdrive(configdrive: str, image_info: dict[str, Any]) -> bytes:
    """The configdrive image, checked before the disk is touched (400 when bad)."""
    try:
        if urlsplit(configdrive.strip()).scheme.lower() in ("http", "https"):
            # the image server's credentials are not sent to the configdrive's server
            network: dict[str, Any] = {
                k: image_info[k] for k in ("proxies", "no_proxy") if k in image_info
            }
            body = await fetch_small(
                configdrive.strip(), 2 * MAX_SIZE, "configdrive", image_info=network
            )
            return decode_configdrive(body)
        return decode_configdrive(configdrive)
    except ImageError as exc:
        raise InvalidCommandParamsError(f"configdrive: {exc}") from None


def check_not_in_use(device: str, sys_block: Path = SYS_BLOCK) -> None:
    """Refuse a disk with a mounted filesystem, or one an LVM/dm/md device is built on."""
    try:
        mounts = MOUNTS.read_text()
    except OSError:
        mounts = ""
    if holds_mounts(device, mounted_devices(mounts)):
        raise ImageWriteError(
            f"refusing to write to {device}: it holds a mounted filesystem", code=409
        )
    users = holders(device, sys_block)
    if users:
        raise ImageWriteError(
            f"refusing to write to {device}: it is in use by {', '.join(users)} "
            "(LVM, device-mapper or md)",
            code=409,
        )


class ImageJob:
    """One image write and what it has done so far (shown while the command runs)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.progress = Progress()
        self.sink: StreamSink | None = None
        self.stage = "download"
        self.converted = 0
        self.touched = False  # the device may hold part of this image

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

    async def stream(self, image_info: dict[str, Any]) -> None:
        """Raw or compressed raw: download, hash, decompress and write overlapped."""
        self.touched = True
        self.sink = StreamSink(DiskWriter(self.device), progress=self.progress)
        try:
            await download(image_info, self.sink, progress=self.progress)
            await self.sink.finish()
        finally:
            self.sink.close()

    async def convert(self, image_info: dict[str, Any], disk_format: str) -> None:
        """qcow2 and friends: to a temp file (room checked), inspect, qemu-img convert."""
        TMP_DIR.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=TMP_DIR, prefix="tacet-image-")
        os.close(handle)
        temp = Path(name)
        try:
            free = shutil.disk_usage(TMP_DIR).free - TMP_RESERVE
            room = f"{TMP_DIR} has {max(free, 0)} bytes free for the download"
            writer = DiskWriter(temp, direct=False, limit=max(free, 0), room=room)
            self.sink = StreamSink(writer, progress=self.progress, inspect=False)
            try:
                await download(image_info, self.sink, progress=self.progress)
                await self.sink.finish()
            finally:
                self.sink.close()
            with open(temp, "rb") as source:
                head = source.read(HEAD_BYTES)
            kind = detect(head)
            check_permitted(kind, disk_format, PERMITTED_FORMATS)
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
            self.touched = True
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
