"""``standby.prepare_image``: pick the target disk, stream the image onto it, verify, sync.

This first version writes raw images only; compressed and qcow2 images, configdrives
and partition discovery (root_uuid) come with the rest of issue 5.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.commands import CommandError, InvalidCommandParamsError
from hardware.hints import HintError, NoMatchingDisk, select_root_device
from hardware.model import Disk

from .checksum import ChecksumMismatch, ImageError
from .download import Progress, download
from .partitions import parse_partition_table, partition_uuids, read_head
from .writer import BlockWriter, holds_mounts, mounted_devices, wipe_ends

if TYPE_CHECKING:
    from agent.core import Agent

LOG = logging.getLogger(__name__)
SUPPORTED_FORMATS = (None, "raw")
MOUNTS = Path("/proc/mounts")
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
    disk_format = image_info.get("disk_format")
    if disk_format not in SUPPORTED_FORMATS:
        raise InvalidCommandParamsError(
            f"disk_format {disk_format!r} is not supported yet (raw only)"
        )
    if configdrive:
        raise InvalidCommandParamsError("configdrive is not supported yet")
    inventory = await agent.inventory.get(refresh=True)
    disk = choose_disk(inventory, {"node": node} if node else agent.node_info)
    try:
        mounts = MOUNTS.read_text()
    except OSError:
        mounts = ""
    if holds_mounts(disk.name, mounted_devices(mounts)):
        raise ImageWriteError(
            f"refusing to write to {disk.name}: it holds a mounted filesystem", code=409
        )
    LOG.warning("prepare_image: writing image %s to %s", image_info.get("id"), disk.name)
    writer = BlockWriter(disk.name)
    progress = Progress()
    try:
        await download(image_info, writer, progress=progress)
        await writer.finish()
    except ImageError as exc:
        # Never leave a half-written or unverified image that could boot as if good.
        wipe_ends(disk.name)
        code = 400 if isinstance(exc, ChecksumMismatch) else 500
        raise ImageWriteError(f"{exc}; {disk.name} was wiped", code=code) from None
    finally:
        writer.close()
    reread_partition_table(disk.name)
    uuids = partition_uuids(disk.name, parse_partition_table(read_head(disk.name)))
    agent.partition_uuids = uuids
    return (
        f"image ({image_info.get('id')}) written to device {disk.name} "
        f"root_uuid={uuids['root uuid']}"
    )


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
