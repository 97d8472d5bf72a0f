"""``image.install_bootloader``: what ironic calls after writing an image, before rebooting.

ironic (``configure_local_boot``) calls it for every whole-disk image in UEFI mode and
for partition images. A whole-disk image brings its boot loaders, so in BIOS mode there
is nothing to do; in UEFI mode the firmware needs boot entries for the loaders on the
image's ESP (:mod:`image.bootloader`). Tacet writes whole-disk images only, so the
partition-image flow (a root partition to install GRUB into) is refused with 400.

Whole-disk or partition is told as ironic and ironic-python-agent tell it: ironic sends
as ``root_uuid`` what ``standby.get_partition_uuids`` reported as ``root uuid`` (for a
whole-disk image the disk identifier; null or ``0x00000000`` when there was none). Any
other ``root_uuid`` names a root partition, which only a partition image has.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..commands import CommandError, InvalidCommandParamsError, Param

if TYPE_CHECKING:
    from ..core import Agent

LOG = logging.getLogger(__name__)
BOOT_MODES = ("bios", "uefi")
NO_ROOT = ("", "0x00000000")  # ironic-python-agent's "no root UUID" for a whole-disk image


class BootloaderError(CommandError):
    code = 500


def check_boot_mode(value: Any) -> None:
    if value not in BOOT_MODES:
        raise InvalidCommandParamsError(
            f"target_boot_mode must be one of {', '.join(BOOT_MODES)}, not {value!r}"
        )


def check_prep_partition(value: Any) -> None:
    """Called for a non-null value only: a PReP partition means a ppc64 partition image."""
    raise InvalidCommandParamsError(
        "prep_boot_part_uuid: PReP boot partitions (ppc64 partition images) are not supported"
    )


def names_a_root_partition(root_uuid: str | None, written: dict[str, Any] | None) -> bool:
    """True when ``root_uuid`` is a partition image's root partition, as far as the
    agent can tell: it is neither empty nor the identifier of the disk it wrote."""
    if root_uuid is None or root_uuid in NO_ROOT or written is None:
        return False
    return root_uuid.lower() != str(written.get("root uuid") or "").lower()


def register(agent: Agent) -> None:
    def check_root_uuid(value: Any) -> None:
        if names_a_root_partition(value, agent.partition_uuids):
            raise InvalidCommandParamsError(
                f"root_uuid {value} is not the identifier of the whole-disk image written "
                f"({agent.partition_uuids and agent.partition_uuids.get('root uuid')}): "
                "partition images are not supported, only whole-disk images"
            )

    async def install_bootloader(
        root_uuid: str | None = None,
        efi_system_part_uuid: str | None = None,
        prep_boot_part_uuid: str | None = None,
        target_boot_mode: str | None = None,
        ignore_bootloader_failure: bool | None = None,
    ) -> dict[str, Any]:
        # Without target_boot_mode (ironic's retry for old agents) the mode the agent
        # itself was booted in decides, as in ironic-python-agent.
        mode = target_boot_mode or ("uefi" if agent.config.efivars_dir.is_dir() else "bios")
        try:
            return await _install(agent, mode, root_uuid, efi_system_part_uuid)
        except BootloaderError as exc:
            if not ignore_bootloader_failure:
                raise
            LOG.error("install_bootloader failed (ignored, ignore_bootloader_failure): %s", exc)
            return {
                "result": "install_bootloader: failed, ignored as asked "
                f"(ignore_bootloader_failure): {exc}",
                "boot_mode": mode,
                "entries": [],
            }

    agent.registry.add(
        "image",
        "install_bootloader",
        install_bootloader,
        is_async=True,
        params={
            "root_uuid": Param((str,), check=check_root_uuid),
            "efi_system_part_uuid": Param((str,)),
            "prep_boot_part_uuid": Param((str,), check=check_prep_partition),
            "target_boot_mode": Param((str,), check=check_boot_mode),
            "ignore_bootloader_failure": Param((bool,)),
        },
    )


async def _install(
    agent: Agent, mode: str, root_uuid: str | None, esp_uuid: str | None
) -> dict[str, Any]:
    disk, written = agent.written_disk, agent.partition_uuids
    if disk is None or written is None:
        if mode == "bios" and (root_uuid is None or root_uuid in NO_ROOT):
            return _nothing_to_do()
        raise BootloaderError(
            "no image has been written yet: boot loaders are set up for the whole-disk "
            "image this agent wrote",
            code=409,
        )
    if names_a_root_partition(root_uuid, written):  # refused on the POST already
        raise BootloaderError("partition images are not supported", code=400)
    if mode == "bios":
        return _nothing_to_do()
    # image/ loads on first use, as for prepare_image: a quicker start
    from image.bootloader import install_uefi_boot
    from image.efi import EfiVars
    from image.errors import BadInput, Conflict, ImageError

    efivars = EfiVars(agent.config.efivars_dir)
    loop = asyncio.get_running_loop()
    try:
        done = await loop.run_in_executor(None, install_uefi_boot, disk, efivars, esp_uuid)
    except ImageError as exc:
        code = 400 if isinstance(exc, BadInput) else 409 if isinstance(exc, Conflict) else 500
        raise BootloaderError(str(exc), code=code) from None
    entries = [
        {
            "boot_number": f"{entry.number:04X}",
            "description": entry.option.description,
            "loader": loader.efi_path,
            "created": entry.created,
        }
        for entry, loader in zip(done.entries, done.loaders, strict=True)
    ]
    names = ", ".join(f"Boot{e['boot_number']} {e['description']!r}" for e in entries)
    return {
        "result": f"install_bootloader: UEFI boot entries first in BootOrder: {names} "
        f"(EFI system partition {done.esp.number} of {disk})",
        "boot_mode": "uefi",
        "device": disk,
        "efi_system_partition": {"number": done.esp.number, "uuid": done.esp.uuid},
        "entries": entries,
        "boot_order": [f"{number:04X}" for number in done.boot_order],
    }


def _nothing_to_do() -> dict[str, Any]:
    LOG.info("install_bootloader: BIOS mode, whole-disk image: nothing to do")
    return {
        "result": "install_bootloader: BIOS boot mode with a whole-disk image: nothing to "
        "do (the image brings its own boot loader)",
        "boot_mode": "bios",
        "entries": [],
    }
