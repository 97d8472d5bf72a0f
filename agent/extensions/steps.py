"""Clean and deploy steps: only those the agent really implements.

Deploy: ``write_image`` (raw images so far, see ``image/provision.py``), which is how
ironic deploys a whole-disk image through ``deploy.execute_deploy_step``. Clean: none
yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..commands import CLEAN_VERSION_MISMATCH, CommandError, InvalidCommandParamsError, Param

if TYPE_CHECKING:
    from ..core import Agent

MANAGER = "TacetHardwareManager"
MANAGER_VERSION = "1.0"
VERSIONS = {MANAGER: MANAGER_VERSION}

DEPLOY_STEPS = [
    {
        "step": "write_image",
        "priority": 0,  # run only when ironic asks for it
        "interface": "deploy",
        "reboot_requested": False,
        "abortable": False,
        "argsinfo": {
            "image_info": {"description": "the image to write", "required": True},
            "configdrive": {"description": "not supported yet", "required": False},
        },
    }
]


class VersionMismatch(CommandError):
    """ironic planned the steps against another agent version (ironic re-reads them)."""

    code = 409
    status = CLEAN_VERSION_MISMATCH


def register(agent: Agent) -> None:
    def lister(kind: str, steps: list[dict[str, Any]]) -> Any:
        async def get_steps(node: Any = None, ports: Any = None) -> dict[str, Any]:
            return {f"{kind}_steps": {MANAGER: steps}, "hardware_manager_version": VERSIONS}

        return get_steps

    async def execute_deploy_step(
        step: dict[str, Any],
        node: dict[str, Any] | None = None,
        ports: list[Any] | None = None,
        deploy_version: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if deploy_version is not None and deploy_version != VERSIONS:
            raise VersionMismatch(
                f"deploy steps were planned for {deploy_version}, this agent is {VERSIONS}"
            )
        name = step.get("step")
        if name != "write_image" or step.get("interface", "deploy") != "deploy":
            raise InvalidCommandParamsError(f"unknown deploy step {name!r}")
        args = step.get("args") or {}
        image_info = args.get("image_info")
        if not isinstance(image_info, dict):
            raise InvalidCommandParamsError("write_image needs args.image_info (an object)")
        configdrive = args.get("configdrive")
        if configdrive is not None and not isinstance(configdrive, str):
            raise InvalidCommandParamsError("write_image args.configdrive must be a string")
        from image.provision import write_image

        result = await write_image(agent, image_info, configdrive, node=node)
        return {"deploy_result": {"result": result}, "deploy_step": step}

    params = {"node": Param((dict,)), "ports": Param((list,))}
    agent.registry.add("clean", "get_clean_steps", lister("clean", []), params=params)
    agent.registry.add("deploy", "get_deploy_steps", lister("deploy", DEPLOY_STEPS), params=params)
    agent.registry.add(
        "deploy",
        "execute_deploy_step",
        execute_deploy_step,
        is_async=True,
        params={
            "step": Param((dict,), required=True),
            "node": Param((dict,)),
            "ports": Param((list,)),
            "deploy_version": Param((dict,)),
        },
    )
