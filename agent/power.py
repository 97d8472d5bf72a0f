"""Powering the machine off or rebooting it, behind a seam tests replace."""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import Protocol

LOG = logging.getLogger(__name__)


class PowerBackend(Protocol):
    async def power_off(self) -> None: ...

    async def reboot(self) -> None: ...


class SystemPower:
    """systemd when it runs, else the classic tools; the kernel syncs on the way down.

    The action starts DELAY s after the command returns: ``systemctl poweroff`` makes
    systemd stop the agent at once, and the conductor's request (``?wait=true``) would
    otherwise lose its answer in that race. The command fails at once if no tool exists.
    """

    DELAY = 1.0

    def __init__(self) -> None:
        self.pending: asyncio.Task[None] | None = None

    async def _run(self, *candidates: list[str]) -> None:
        for argv in candidates:
            if shutil.which(argv[0]):
                LOG.warning("power: running %s", " ".join(argv))
                process = await asyncio.create_subprocess_exec(*argv)
                if await process.wait() == 0:
                    return
        LOG.error("power: no way to power the machine: tried %s", candidates)

    def _schedule(self, *candidates: list[str]) -> None:
        if not any(shutil.which(argv[0]) for argv in candidates):
            raise RuntimeError(f"no way to power the machine: tried {candidates}")

        async def later() -> None:
            await asyncio.sleep(self.DELAY)
            await self._run(*candidates)

        self.pending = asyncio.create_task(later())

    async def power_off(self) -> None:
        self._schedule(["systemctl", "poweroff"], ["poweroff", "-f"])

    async def reboot(self) -> None:
        self._schedule(["systemctl", "reboot"], ["reboot", "-f"])


class RecordingPower:
    """Does nothing but remember what was asked: development and tests."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def power_off(self) -> None:
        LOG.warning("power: power off requested (recording backend, nothing done)")
        self.calls.append("power_off")

    async def reboot(self) -> None:
        LOG.warning("power: reboot requested (recording backend, nothing done)")
        self.calls.append("reboot")
