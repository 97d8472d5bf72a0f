"""ironic as a site runs it: one API process, several conductors, PostgreSQL, JSON-RPC.

:class:`IronicCluster` starts a :class:`~tests.ironic.postgres.PostgresServer`, creates
ironic's schema in it, then one ``ironic-conductor`` process per entry of
``conductor_groups`` and one ``ironic-api`` process, all on 127.0.0.1. Each process has
its own ``ironic.conf`` and working directory (``launcher.ironic_config`` with the
overrides given, so the plugin's options apply to every conductor alike), and
``rpc_transport = json-rpc`` (noauth, as the rest of the test site). A conductor's
``host`` is 127.0.0.1 and ironic registers it as ``127.0.0.1:<its JSON-RPC port>``: the
hash ring names conductors by that, and the JSON-RPC client reaches a conductor at the
port its name carries, so several conductors share one machine. Liveness is quick: a
conductor heartbeats every 2 s and is taken for dead after 10 s (``[conductor]
heartbeat_timeout``), and the survivors take over its nodes within a few seconds
(``sync_local_state_interval``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .launcher import (
    START_TIMEOUT,
    IronicApi,
    IronicError,
    IronicInstall,
    IronicService,
    free_port,
)
from .postgres import PostgresServer

# ironic's defaults wait 60 s before declaring a silent conductor dead and 180 s before
# the survivors look for nodes to take over; a test waits seconds.
LIVENESS = {
    "conductor": {
        "heartbeat_timeout": "10",
        "sync_local_state_interval": "5",
    },
    "DEFAULT": {"hash_ring_reset_interval": "5"},
}


@dataclass
class ClusterProcess(IronicService):
    """One process of the cluster: ``ironic-api`` or ``ironic-conductor``."""

    command: str = "ironic-conductor"
    rpc_port: int = 0
    group: str = ""

    @property
    def host(self) -> str:
        """The conductor's name on the hash ring, and where its JSON-RPC server listens."""
        return f"127.0.0.1:{self.rpc_port}"

    def spawn(self) -> None:
        """Start the process (the schema exists, the config is written); no waiting."""
        with self.console.open("wb") as out:
            self.process = subprocess.Popen(
                [str(self.install.bin / self.command), "--config-file", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL, as a host that loses power: no goodbye to the database."""
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def signal(self, number: int) -> None:
        """Send ``number`` to the process group, if it still runs."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, number)


def _merge(*layers: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    merged: dict[str, dict[str, str]] = {}
    for layer in layers:
        for section, values in layer.items():
            merged.setdefault(section, {}).update(values)
    return merged


@dataclass
class IronicCluster:
    install: IronicInstall
    workdir: Path
    conductor_groups: list[str] = field(default_factory=lambda: ["", ""])
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    database: PostgresServer = field(default_factory=PostgresServer)
    api: ClusterProcess | None = None
    conductors: list[ClusterProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.api is not None
        return self.api.url

    def _process(self, name: str, command: str, api_port: int, group: str = "") -> ClusterProcess:
        rpc_port = free_port() if command == "ironic-conductor" else 0
        common = {
            "DEFAULT": {"rpc_transport": "json-rpc"},
            "database": {"connection": self.database.url},
            "json_rpc": {"host_ip": "127.0.0.1", "port": str(rpc_port or 8089)},
        }
        # ironic's API on threads binds its port once per worker: one worker.
        own: dict[str, dict[str, str]] = {"api": {"api_workers": "1"}}
        if command == "ironic-conductor":
            # ironic registers a JSON-RPC conductor as host:port (the port not its default).
            own = {"DEFAULT": {"host": "127.0.0.1"}, "conductor": {"conductor_group": group}}
        process = ClusterProcess(
            self.install,
            self.workdir / name,
            overrides=_merge(LIVENESS, self.overrides, common, own),
            api_port=api_port,
            command=command,
            rpc_port=rpc_port,
            group=group,
        )
        process.write_config()
        return process

    def start(self) -> None:
        self.database.start()
        api_port = free_port()
        self.api = self._process("api", "ironic-api", api_port)
        self.api.create_schema()
        for index, group in enumerate(self.conductor_groups):
            conductor = self._process(f"conductor-{index}", "ironic-conductor", api_port, group)
            self.conductors.append(conductor)
            conductor.spawn()
        self.api.spawn()
        self.wait_alive([c.host for c in self.conductors])

    def add_conductor(self, group: str = "") -> ClusterProcess:
        """One more conductor joins the running site (the hash ring gives it its share)."""
        assert self.api is not None
        conductor = self._process(
            f"conductor-{len(self.conductors)}", "ironic-conductor", self.api.api_port, group
        )
        self.conductors.append(conductor)
        conductor.spawn()
        self.wait_alive([c.host for c in self.running()])
        return conductor

    def remove_conductor(self) -> ClusterProcess:
        """The newest running conductor stops (SIGTERM: it leaves the ring cleanly)."""
        conductor = self.running()[-1]
        conductor.stop()
        self.wait_alive([c.host for c in self.running()])
        return conductor

    def running(self) -> list[ClusterProcess]:
        return [c for c in self.conductors if c.process is not None and c.process.poll() is None]

    def wait_alive(self, hosts: list[str], timeout: float = START_TIMEOUT) -> None:
        """Until the API answers and lists exactly ``hosts`` as the live conductors."""
        assert self.api is not None
        api = IronicApi(self.url)
        deadline = time.monotonic() + timeout
        seen: Any = None
        while time.monotonic() < deadline:
            for process in [self.api, *self.conductors]:
                gone = process.process is not None and process.process.poll() is not None
                if gone and (process.host in hosts or process is self.api):
                    raise IronicError(f"{process.command} exited\n{process.tail()}")
            try:
                seen = self.alive_conductors(api)
                if sorted(seen) == sorted(hosts):
                    return
            except (OSError, IronicError) as exc:
                seen = exc
            time.sleep(0.5)
        raise IronicError(f"conductors alive: {seen!r}, wanted {hosts}\n{self.tail()}")

    def alive_conductors(self, api: IronicApi | None = None) -> dict[str, str]:
        """host -> conductor group of every conductor the API reports alive."""
        api = api or IronicApi(self.url)
        found = api.get("/v1/conductors?detail=True")["conductors"]
        return {c["hostname"]: c["conductor_group"] for c in found if c["alive"]}

    def stop(self) -> None:
        for process in [*self.conductors, *([self.api] if self.api else [])]:
            process.stop()
        self.database.remove()

    def tail(self, lines: int = 40) -> str:
        parts = [p.tail(lines) for p in [*([self.api] if self.api else []), *self.conductors]]
        return "\n".join(parts) + "\n--- postgres ---\n" + self.database.tail()
