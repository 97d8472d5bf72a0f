"""An agent on 127.0.0.1 over real TLS, and a client pinned to its certificate."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.config import Config
from agent.daemon import AgentServer
from agent.power import RecordingPower
from wire.tls import client_context

TOKEN = "s3cr3t-token-for-tests"


@dataclass
class FakeInventory:
    calls: int = 0
    hold: asyncio.Event | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return {"interfaces": [], "disks": [], "hostname": "node-1", "calls": self.calls}


@dataclass
class Running:
    server: AgentServer
    client: aiohttp.ClientSession
    power: RecordingPower
    inventory: FakeInventory
    base: str

    @property
    def agent(self):
        return self.server.agent

    async def post(self, body: Any, token: str | None = TOKEN, wait: bool = False, raw=None):
        params = {"wait": "true"} if wait else {}
        if token:
            params["agent_token"] = token
        data = raw if raw is not None else None
        kwargs = {"data": data} if raw is not None else {"json": body}
        async with self.client.post(f"{self.base}/v1/commands/", params=params, **kwargs) as r:
            return r.status, await r.json()

    async def get(self, path: str, token: str | None = TOKEN, **params: str):
        if token:
            params["agent_token"] = token
        async with self.client.get(f"{self.base}{path}", params=params, allow_redirects=False) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else None)


def make_config(state_dir: Path, **overrides: Any) -> Config:
    values: dict[str, Any] = dict(
        listen_host="127.0.0.1",
        listen_port=0,
        state_dir=state_dir,
        config_dir=state_dir / "etc",
        agent_token=TOKEN,
    )
    values.update(overrides)
    return Config(**values)


async def start(state_dir: Path, inventory: Any = None, **overrides: Any) -> Running:
    power = RecordingPower()
    inventory = inventory or FakeInventory()
    server = AgentServer(make_config(state_dir, **overrides), power, collect_inventory=inventory)
    agent = await server.start()
    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_context(cadata=agent.identity.cert_pem))
    )
    return Running(server, client, power, inventory, f"https://127.0.0.1:{server.port}")


@pytest.fixture
async def running(tmp_path):
    run = await start(tmp_path / "state")
    yield run
    await run.client.close()
    await run.server.stop("test finished")
