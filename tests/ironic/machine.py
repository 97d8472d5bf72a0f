"""One enrolled node in the real ironic, driven through its REST API as an operator would.

:class:`Machine` enrolls a node (``manual-management`` hardware type: ``pxe`` boot,
``fake`` power, ``noop`` management, ``direct`` deploy, ``agent`` inspection) with a
port for each MAC the agent's inventory reports, so ironic's lookup by MAC finds it.
When ironic waits for its ramdisk (``wait call-back``, ``clean wait``, ``inspect
wait``), :meth:`Machine.boot_agent` "boots" one: a :class:`LocalAgent` with the kernel
command line from the PXE config ironic wrote. When ironic is done with it, the agent is
stopped, as the node's reboot into its instance would end it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .launcher import FAILURE_STATES, IronicApi, IronicError, IronicService, node_body
from .node import LocalAgent, LoopDisk, ramdisk_cmdline

STATE_TIMEOUT = 240.0


class Machine:
    def __init__(
        self,
        ironic: IronicService,
        workdir: Path,
        macs: list[str],
        deploy_kernel: str,
        deploy_ramdisk: str,
        disk_mib: int = 128,
    ) -> None:
        if not macs:
            raise IronicError("the agent's inventory lists no interface with a MAC address")
        self.ironic = ironic
        self.api = IronicApi(ironic.url)
        self.workdir = workdir
        self.macs = macs
        self.deploy_kernel = deploy_kernel
        self.deploy_ramdisk = deploy_ramdisk
        self.disk = LoopDisk(workdir, disk_mib)
        self.uuid: str | None = None
        self.agents: list[LocalAgent] = []

    # -- enrollment ----------------------------------------------------------------------
    def enroll(
        self,
        boot_mode: str = "bios",
        instance_info: dict[str, Any] | None = None,
        automated_clean: bool = False,
    ) -> str:
        """Create the node and its ports and make it ``manageable``; its UUID."""
        node = self.api.post(
            "/v1/nodes",
            node_body(
                self.deploy_kernel,
                self.deploy_ramdisk,
                name=f"tacet-{self.workdir.name}".lower()[:60],
                boot_mode=boot_mode,
                # The agent sees one disk, but ironic's hint travels all the same.
                root_device={"name": self.disk.device},
                instance_info=instance_info,
                automated_clean=automated_clean,
            ),
        )
        self.uuid = node["uuid"]
        for mac in self.macs:
            self.api.post("/v1/ports", {"node_uuid": self.uuid, "address": mac})
        self.api.set_provision_state(self.uuid, "manage")
        self.wait_for("manageable")
        return self.uuid

    def node(self) -> dict[str, Any]:
        return self.api.node(self.ident)

    @property
    def ident(self) -> str:
        if self.uuid is None:
            raise IronicError("the node is not enrolled yet")
        return self.uuid

    def wait_for(self, state: str, timeout: float = STATE_TIMEOUT) -> dict[str, Any]:
        """Failing tests show ironic's and the agents' logs (conftest's report hook)."""
        return self.api.wait_for_state(self.ident, state, timeout, FAILURE_STATES - {state})

    # -- the ramdisk ---------------------------------------------------------------------
    def boot_agent(self, settings: dict[str, str] | None = None) -> LocalAgent:
        """Start the agent with the command line ironic's PXE config gives the node."""
        cmdline = ramdisk_cmdline(self.ironic.workdir / "tftp", self.macs[0])
        agent = LocalAgent(
            self.workdir / f"boot-{len(self.agents) + 1}", cmdline, self.disk, settings
        )
        self.agents.append(agent)
        agent.start()
        return agent

    def shut_down_agent(self) -> None:
        for agent in self.agents:
            agent.stop()

    def run_with_agent(
        self, target: str, waiting: str, done: str, settings: dict[str, str] | None = None
    ) -> tuple[dict[str, Any], float]:
        """Ask for ``target``, boot the agent once ironic is ``waiting`` for it, wait for
        ``done`` (or a failed state, returned too); the node and the seconds it took."""
        started = time.monotonic()
        self.api.set_provision_state(self.ident, target)
        self.wait_for(waiting)
        agent = self.boot_agent(settings)
        node = self.api.wait_for_state(
            self.ident, {done, *FAILURE_STATES}, STATE_TIMEOUT, alive=agent.problem
        )
        elapsed = time.monotonic() - started
        self.shut_down_agent()
        return node, elapsed

    # -- the usual operations --------------------------------------------------------------
    def provide(self) -> dict[str, Any]:
        """manageable -> available (through cleaning, with the agent, when it is on)."""
        if not self.node().get("automated_clean"):
            self.api.set_provision_state(self.ident, "provide")
            return self.wait_for("available")
        node, _ = self.run_with_agent("provide", "clean wait", "available")
        return node

    def deploy(self, settings: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:
        """available -> active (or ``deploy failed``); the node and seconds from the
        deploy request until ironic reached that state."""
        return self.run_with_agent("active", "wait call-back", "active", settings)

    def inspect(self) -> tuple[dict[str, Any], float]:
        """manageable -> manageable through ``inspect wait`` (or ``inspect failed``)."""
        return self.run_with_agent("inspect", "inspect wait", "manageable")

    # -- diagnostics and teardown ------------------------------------------------------------
    def logs(self) -> str:
        return "\n".join([self.ironic.tail(), *(agent.tail() for agent in self.agents)])

    def close(self) -> None:
        self.shut_down_agent()
        try:
            if self.uuid is not None:
                # Any state may be deleted in maintenance: the next test reuses the MACs.
                self.api.request(
                    "PUT", f"/v1/nodes/{self.uuid}/maintenance", {"reason": "test over"}
                )
                self.api.delete(f"/v1/nodes/{self.uuid}")
        finally:
            self.disk.close()
