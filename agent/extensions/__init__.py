"""Command extensions (poll, standby, log, clean, deploy), registered in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..core import Agent


def register_all(agent: Agent) -> None:
    from . import log, poll, standby, steps

    for module in (poll, standby, log, steps):
        module.register(agent)
