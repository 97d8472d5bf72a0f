"""Running the erase steps over the agent's disks, with progress while RUNNING."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from agent.commands import CommandError, report_progress

from . import provision
from .erase import EraseError, EraseProgress, erasable, erase, wipe_metadata

if TYPE_CHECKING:
    from agent.core import Agent

LOG = logging.getLogger(__name__)


async def run_erase_step(agent: Agent, name: str) -> dict[str, Any]:
    """``erase_devices_metadata`` or ``erase_devices`` on every disk but the agent's."""
    inventory = await agent.inventory.get(refresh=True)
    names = [disk["name"] for disk in inventory.get("disks") or []]
    try:
        mounts = provision.MOUNTS.read_text()
    except OSError:
        mounts = ""
    targets, skipped = erasable(names, mounts, provision.SYS_CLASS)
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
