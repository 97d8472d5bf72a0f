"""The agent's side of deploying: which disk, the configdrive, and what an image error means.

``image/`` writes an image onto a device it is given and says what kind of trouble it
met (:mod:`image.errors`); here the device is chosen from the agent's inventory and
the node's root-device hints, and each kind becomes a ``command_error`` code: bad
input 400, a disk that cannot be used 409, anything else 500. Shared by
``standby.prepare_image`` and the ``write_image``/erase steps.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from hardware.disks import is_loop_device
from hardware.hints import HintError, NoMatchingDisk, select_root_device
from hardware.model import Disk
from image import provision
from image.configdrive import MAX_SIZE
from image.configdrive import decode as decode_configdrive
from image.download import fetch_small
from image.erase import EraseError, EraseProgress, erasable, erase, wipe_metadata
from image.errors import BadInput, Conflict, ImageError

from ..commands import CommandError, InvalidCommandParamsError, report_progress

if TYPE_CHECKING:
    from ..core import Agent

LOG = logging.getLogger(__name__)
LOOP_OPT_IN = "allow-loop-devices"


class ImageWriteError(CommandError):
    code = 500


def command_error(error: ImageError) -> CommandError:
    """An image error as the command's error: 400, 409 or 500 by its kind."""
    code = 400 if isinstance(error, BadInput) else 409 if isinstance(error, Conflict) else 500
    return ImageWriteError(str(error), code=code)


def check_image_info(image_info: dict[str, Any]) -> None:
    """What can be refused from the request alone, before the command starts (400)."""
    try:
        provision.check_request(image_info)
    except ImageError as exc:
        raise InvalidCommandParamsError(str(exc)) from None


def check_deploy_step(step: dict[str, Any]) -> None:
    args = step.get("args")
    image_info = args.get("image_info") if isinstance(args, dict) else None
    if step.get("step") == "write_image" and isinstance(image_info, dict):
        check_image_info(image_info)


def root_device_hints(node_info: dict[str, Any] | None) -> dict[str, Any] | None:
    node = (node_info or {}).get("node") or {}
    for section in ("instance_info", "properties"):
        hints = (node.get(section) or {}).get("root_device")
        if hints:
            return dict(hints)
    return None


def choose_disk(
    inventory: dict[str, Any], node_info: dict[str, Any] | None, allow_loop: bool = False
) -> Disk:
    """The disk the root-device hints pick (the smallest disk of 4 GiB or more without
    hints); a loop device only when the agent was told it may use them."""
    disks = [Disk(**disk) for disk in inventory.get("disks") or []]
    try:
        disk = select_root_device(disks, root_device_hints(node_info))
    except HintError as exc:
        raise InvalidCommandParamsError(f"root device hints: {exc}") from None
    except NoMatchingDisk as exc:
        raise ImageWriteError(str(exc), code=409) from None
    if is_loop_device(disk.name) and not allow_loop:
        raise ImageWriteError(
            f"refusing to write to {disk.name}: it is a loop device "
            f"(set {LOOP_OPT_IN} to allow them)",
            code=409,
        )
    return disk


async def write_image(
    agent: Agent,
    image_info: dict[str, Any],
    configdrive: str | None,
    node: dict[str, Any] | None = None,
) -> str:
    """Write the image; root-device hints come from ``node`` (a deploy step's) or the
    stored node_info. Progress shows as the running command's result."""
    check_image_info(image_info)
    drive = await fetch_configdrive(configdrive, image_info) if configdrive else None
    inventory = await agent.inventory.get(refresh=True)
    disk = choose_disk(
        inventory,
        {"node": node} if node else agent.node_info,
        bool(agent.config.allow_loop_devices),
    )
    try:
        provision.check_not_in_use(disk.name)
        job = provision.ImageJob(disk.name, image_info, image_info.get("disk_format"), drive)
        LOG.warning("prepare_image: writing image %s to %s", image_info.get("id"), disk.name)
        report_progress(job.status)
        uuids = await job.run()
    except ImageError as exc:
        raise command_error(exc) from None
    agent.partition_uuids = uuids
    agent.written_disk = disk.name
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


async def run_erase_step(agent: Agent, name: str) -> dict[str, Any]:
    """``erase_devices_metadata`` or ``erase_devices`` on every disk but the agent's own
    (and loop devices unless allowed), with progress while the command runs."""
    inventory = await agent.inventory.get(refresh=True)
    names = [disk["name"] for disk in inventory.get("disks") or []]
    try:
        mounts = provision.MOUNTS.read_text()
    except OSError:
        mounts = ""
    targets, skipped = erasable(names, mounts, provision.SYS_CLASS)
    if not agent.config.allow_loop_devices:
        skipped += [device for device in targets if is_loop_device(device)]
        targets = [device for device in targets if not is_loop_device(device)]
    progress = EraseProgress()
    finished: dict[str, str] = {}

    def status() -> dict[str, Any]:
        return {
            "step": name,
            "erased": dict(finished),
            "skipped": skipped,
            "current": progress.device or None,
            "method": progress.method or None,
            "done_bytes": progress.done,
            "total_bytes": progress.total,
        }

    report_progress(status)
    stop = False
    loop = asyncio.get_running_loop()
    try:
        for device in targets:
            LOG.warning("%s: erasing %s", name, device)
            try:
                if name == "erase_devices_metadata":
                    await loop.run_in_executor(None, wipe_metadata, device)
                    finished[device] = "metadata"
                else:
                    finished[device] = await loop.run_in_executor(
                        None, erase, device, progress, provision.SYS_CLASS, lambda: stop
                    )
            except (EraseError, OSError) as exc:
                raise CommandError(f"{name}: {device}: {exc}") from None
            provision.reread_partition_table(device)
    except asyncio.CancelledError:
        stop = True
        raise
    return {"erased": finished, "skipped": skipped}
