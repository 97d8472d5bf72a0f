"""Syncing, powering off and rebooting, and writing an image (``prepare_image``)."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from ..commands import Param

if TYPE_CHECKING:
    from ..core import Agent

LOG = logging.getLogger(__name__)


def check_image_info(image_info: dict[str, Any]) -> None:
    from .deploy import check_image_info as check

    check(image_info)


def register(agent: Agent) -> None:
    async def sync() -> None:
        await asyncio.get_running_loop().run_in_executor(None, os.sync)

    async def power_off() -> None:
        await sync()
        await agent.power.power_off()

    async def run_image() -> None:
        await sync()
        await agent.power.reboot()

    async def prepare_image(image_info: dict[str, Any], configdrive: str | None = None) -> str:
        from .deploy import write_image  # image/ loads on first use: a quicker start

        return await write_image(agent, image_info, configdrive)

    async def get_partition_uuids() -> dict[str, Any]:
        # As IPA: {} before any image was written; ironic calls this after writing, and
        # reads {} as "no partition UUIDs known" rather than failing the deploy.
        if agent.partition_uuids is None:
            LOG.warning("get_partition_uuids: no image has been written yet")
        return agent.partition_uuids or {}

    agent.registry.add("standby", "sync", sync)
    agent.registry.add("standby", "get_partition_uuids", get_partition_uuids)
    agent.registry.add(
        "standby",
        "prepare_image",
        prepare_image,
        is_async=True,
        params={
            "image_info": Param((dict,), required=True, check=check_image_info),
            "configdrive": Param((str,)),
        },
    )
    agent.registry.add("standby", "power_off", power_off, is_async=True)
    agent.registry.add("standby", "run_image", run_image, is_async=True)
