"""Clean and deploy steps: only those the agent really implements (none yet)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..commands import Param

if TYPE_CHECKING:
    from ..core import Agent

MANAGER = "TacetHardwareManager"
MANAGER_VERSION = "1.0"


def register(agent: Agent) -> None:
    def lister(kind: str) -> Any:
        async def get_steps(node: Any = None, ports: Any = None) -> dict[str, Any]:
            return {
                f"{kind}_steps": {MANAGER: []},
                "hardware_manager_version": {MANAGER: MANAGER_VERSION},
            }

        return get_steps

    params = {"node": Param((dict,)), "ports": Param((list,))}
    agent.registry.add("clean", "get_clean_steps", lister("clean"), params=params)
    agent.registry.add("deploy", "get_deploy_steps", lister("deploy"), params=params)
