"""The passive-mode commands: inventory, and handing the agent its node_info."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..commands import InvalidCommandParamsError, Param

if TYPE_CHECKING:
    from ..core import Agent

LOG = logging.getLogger(__name__)


def register(agent: Agent) -> None:
    async def get_hardware_info(refresh: bool = False) -> dict[str, Any]:
        return await agent.inventory.get(refresh=refresh)

    async def set_node_info(node_info: dict[str, Any]) -> dict[str, Any]:
        node = node_info.get("node", {})
        config = node_info.get("config", {})
        if not isinstance(node, dict) or not isinstance(config, dict):
            raise InvalidCommandParamsError("node_info.node and node_info.config must be objects")
        token = config.get("agent_token")
        if token is not None and (not isinstance(token, str) or not token or token == "******"):
            raise InvalidCommandParamsError("node_info.config.agent_token must be a token string")
        timeout = config.get("heartbeat_timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise InvalidCommandParamsError("node_info.config.heartbeat_timeout must be > 0")
        tls_min = config.get("tls_min_version")
        if tls_min is not None and tls_min not in ("1.2", "1.3"):
            raise InvalidCommandParamsError("node_info.config.tls_min_version must be 1.2 or 1.3")
        agent.apply_node_info(node_info)
        return agent.node_info or {}

    async def get_node_info() -> dict[str, Any] | None:
        return agent.node_info

    registry = agent.registry
    registry.add("poll", "get_hardware_info", get_hardware_info, params={"refresh": Param((bool,))})
    node_info_params = {"node_info": Param((dict,), required=True)}
    registry.add("poll", "set_node_info", set_node_info, params=node_info_params)
    registry.add("poll", "node_info", set_node_info, params=node_info_params)
    registry.add("poll", "get_node_info", get_node_info)
