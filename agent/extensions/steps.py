"""Clean, deploy and service steps: only those the agent really implements.

Deploy: ``write_image`` (see ``deploy.py``), which is how ironic deploys a
whole-disk image through ``deploy.execute_deploy_step``. Clean and deploy:
``erase_devices_metadata`` and ``erase_devices`` (``image/erase.py``) with the
priorities ironic-python-agent gives them, so ironic's automated cleaning runs them.
Service (``service.*``, ironic's servicing of a deployed node): ``write_image`` only,
as in IPA, whose service steps leave out whatever erases disks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..commands import CLEAN_VERSION_MISMATCH, CommandError, InvalidCommandParamsError, Param

if TYPE_CHECKING:
    from ..core import Agent

MANAGER = "TacetHardwareManager"
MANAGER_VERSION = "1.0"
VERSIONS = {MANAGER: MANAGER_VERSION}


def _erase_step(name: str, priority: int) -> dict[str, Any]:
    return {
        "step": name,
        "priority": priority,
        "interface": "deploy",
        "reboot_requested": False,
        "abortable": True,
    }


# ironic-python-agent's priorities: metadata first (99), then the whole disks (10).
CLEAN_STEPS = [_erase_step("erase_devices_metadata", 99), _erase_step("erase_devices", 10)]
DEPLOY_STEPS = [
    {
        "step": "write_image",
        "priority": 0,  # run only when ironic asks for it
        "interface": "deploy",
        "reboot_requested": False,
        "abortable": False,
        "argsinfo": {
            "image_info": {"description": "the image to write", "required": True},
            "configdrive": {
                "description": "gzip+base64 ISO labelled config-2, or its URL",
                "required": False,
            },
        },
    },
    _erase_step("erase_devices_metadata", 0),
    _erase_step("erase_devices", 0),
]
ERASE_STEPS = {"erase_devices_metadata", "erase_devices"}
SERVICE_STEPS = [DEPLOY_STEPS[0]]  # write_image


class VersionMismatch(CommandError):
    """ironic planned the steps against another agent version (ironic re-reads them)."""

    code = 409
    status = CLEAN_VERSION_MISMATCH


def check_deploy_step(step: dict[str, Any]) -> None:
    from .deploy import check_deploy_step as check

    check(step)


def register(agent: Agent) -> None:
    def lister(kind: str, steps: list[dict[str, Any]]) -> Any:
        async def get_steps(node: Any = None, ports: Any = None) -> dict[str, Any]:
            return {f"{kind}_steps": {MANAGER: steps}, "hardware_manager_version": VERSIONS}

        return get_steps

    async def execute_clean_step(
        step: dict[str, Any],
        node: dict[str, Any] | None = None,
        ports: list[Any] | None = None,
        clean_version: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if clean_version is not None and clean_version != VERSIONS:
            raise VersionMismatch(
                f"clean steps were planned for {clean_version}, this agent is {VERSIONS}"
            )
        name = step.get("step")
        if name not in ERASE_STEPS or step.get("interface", "deploy") != "deploy":
            raise InvalidCommandParamsError(f"unknown clean step {name!r}")
        from .deploy import run_erase_step

        return {"clean_result": await run_erase_step(agent, name), "clean_step": step}

    async def run_step(
        kind: str,
        offered: list[dict[str, Any]],
        step: dict[str, Any],
        node: dict[str, Any] | None,
        version: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """A deploy or service step from ``offered``: ``{"<kind>_result", "<kind>_step"}``."""
        if version is not None and version != VERSIONS:
            raise VersionMismatch(
                f"{kind} steps were planned for {version}, this agent is {VERSIONS}"
            )
        name = step.get("step")
        if step.get("interface", "deploy") != "deploy" or name not in {s["step"] for s in offered}:
            raise InvalidCommandParamsError(f"unknown {kind} step {name!r}")
        if name in ERASE_STEPS:
            from .deploy import run_erase_step

            return {f"{kind}_result": await run_erase_step(agent, name), f"{kind}_step": step}
        return {f"{kind}_result": await write_image_step(step, node), f"{kind}_step": step}

    async def execute_deploy_step(
        step: dict[str, Any],
        node: dict[str, Any] | None = None,
        ports: list[Any] | None = None,
        deploy_version: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return await run_step("deploy", DEPLOY_STEPS, step, node, deploy_version)

    async def execute_service_step(
        step: dict[str, Any],
        node: dict[str, Any] | None = None,
        ports: list[Any] | None = None,
        service_version: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return await run_step("service", SERVICE_STEPS, step, node, service_version)

    async def write_image_step(step: dict[str, Any], node: dict[str, Any] | None) -> Any:
        args = step.get("args") or {}
        image_info = args.get("image_info")
        if not isinstance(image_info, dict):
            raise InvalidCommandParamsError("write_image needs args.image_info (an object)")
        configdrive = args.get("configdrive")
        if configdrive is not None and not isinstance(configdrive, str):
            raise InvalidCommandParamsError("write_image args.configdrive must be a string")
        from .deploy import write_image

        return {"result": await write_image(agent, image_info, configdrive, node=node)}

    params = {"node": Param((dict,)), "ports": Param((list,))}
    agent.registry.add("clean", "get_clean_steps", lister("clean", CLEAN_STEPS), params=params)
    agent.registry.add("deploy", "get_deploy_steps", lister("deploy", DEPLOY_STEPS), params=params)
    service_lister = lister("service", SERVICE_STEPS)
    agent.registry.add("service", "get_service_steps", service_lister, params=params)
    agent.registry.add(
        "clean",
        "execute_clean_step",
        execute_clean_step,
        is_async=True,
        params={
            "step": Param((dict,), required=True),
            "node": Param((dict,)),
            "ports": Param((list,)),
            "clean_version": Param((dict,)),
        },
    )
    agent.registry.add(
        "deploy",
        "execute_deploy_step",
        execute_deploy_step,
        is_async=True,
        params={
            "step": Param((dict,), required=True, check=check_deploy_step),
            "node": Param((dict,)),
            "ports": Param((list,)),
            "deploy_version": Param((dict,)),
        },
    )
    agent.registry.add(
        "service",
        "execute_service_step",
        execute_service_step,
        is_async=True,
        params={
            "step": Param((dict,), required=True, check=check_deploy_step),
            "node": Param((dict,)),
            "ports": Param((list,)),
            "service_version": Param((dict,)),
        },
    )
