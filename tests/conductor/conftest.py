"""Real agents on 127.0.0.1 for the conductor's tests: a CA-issued node, a file 'disk',
an image server on loopback."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.config import Config
from agent.daemon import AgentServer
from agent.power import RecordingPower
from conductor import pki
from tests.agent.conftest import TOKEN
from tests.image.test_prepare_image import GIB, IMAGE, DiskInventory

__all__ = ["GIB", "IMAGE", "TOKEN"]


@dataclass
class Pki:
    ca: Path  # the CA directory; ca.pem inside
    node_cert: Path
    node_key: Path
    client_cert: Path
    client_key: Path

    @property
    def ca_pem(self) -> Path:
        return self.ca / "ca.pem"


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory) -> Pki:
    base = tmp_path_factory.mktemp("conductor-pki")
    pki.init_ca(base)
    client = pki.issue_client(base, "conductor")
    bundle = pki.node_bundle(base, "node-1", ["127.0.0.1"], token=TOKEN)
    (base / "node-cert.pem").write_bytes(bundle.cert_pem)
    (base / "node-key.pem").write_bytes(bundle.key_pem)
    (base / "node-key.pem").chmod(0o600)
    return Pki(
        base, base / "node-cert.pem", base / "node-key.pem", client.cert_path, client.key_path
    )


class Node:
    """A real agent and what it was given."""

    def __init__(self, server: AgentServer, power: RecordingPower, disk: Path) -> None:
        self.server = server
        self.power = power
        self.disk = disk

    @property
    def agent(self) -> Any:
        return self.server.agent

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


def make_disk(path: Path) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(5 * GIB)  # sparse
    return path


@pytest.fixture
async def start_node(tmp_path):
    """start_node(name, **config overrides) -> Node; stopped at the end of the test."""
    started: list[AgentServer] = []

    async def start(name: str = "node", inventory: Any = None, **overrides: Any) -> Node:
        base = tmp_path / name
        base.mkdir()
        disk = make_disk(base / "disk")
        values: dict[str, Any] = dict(
            listen_host="127.0.0.1",
            listen_port=0,
            state_dir=base / "state",
            config_dir=base / "etc",
            agent_token=TOKEN,
        )
        values.update(overrides)
        power = RecordingPower()
        server = AgentServer(
            Config(**values), power, collect_inventory=inventory or DiskInventory(disk)
        )
        await server.start()
        started.append(server)
        return Node(server, power, disk)

    yield start
    for server in started:
        await server.stop("test finished")


@dataclass
class ImageServer:
    base: str
    release: asyncio.Event  # set to let a held download go on
    hold: bool = False

    def info(self, digest: str | None = None, image_id: str = "img-1") -> dict[str, Any]:
        return {
            "id": image_id,
            "urls": [f"{self.base}/disk.img"],
            "disk_format": "raw",
            "os_hash_algo": "sha256",
            "os_hash_value": digest or hashlib.sha256(IMAGE).hexdigest(),
        }


@pytest.fixture
async def image_server(aiohttp_server):
    state = ImageServer("", asyncio.Event())

    async def image(request: web.Request) -> web.StreamResponse:
        if state.hold:
            await state.release.wait()
        return web.Response(body=IMAGE)

    app = web.Application()
    app.router.add_get("/disk.img", image)
    server = await aiohttp_server(app, host="127.0.0.1")
    state.base = f"http://127.0.0.1:{server.port}"
    yield state
    state.release.set()
