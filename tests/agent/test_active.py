"""Active mode against a fake ironic API on loopback: lookup, heartbeat, token, fail-over."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from agent import ironic
from agent.ironic import IronicClient, LookupFailed, callback_url, route_address
from tests.agent.conftest import TOKEN, FakeInventory, start

NODE_UUID = "0c1d2e3f-4a5b-4c6d-8e7f-90a1b2c3d4e5"
LOOKUP_TOKEN = "token-from-lookup-123"
MAC = "52:54:00:7a:c0:01"


class FakeIronic:
    def __init__(self, conflicts: int = 0) -> None:
        self.lookups: list[web.Request] = []
        self.heartbeats: list[dict] = []
        self.heartbeat_headers: list[dict] = []
        self.conflicts = conflicts
        self.issued = False
        self.got_heartbeat = asyncio.Event()
        app = web.Application()
        app.router.add_get("/v1/lookup", self.lookup)
        app.router.add_post("/v1/heartbeat/{uuid}", self.heartbeat)
        self.app = app

    async def lookup(self, request: web.Request) -> web.Response:
        self.lookups.append(request)
        if self.conflicts:
            self.conflicts -= 1
            return web.json_response({"error_message": "node locked"}, status=409)
        token = LOOKUP_TOKEN if not self.issued else "******"
        self.issued = True
        return web.json_response(
            {
                "node": {"uuid": NODE_UUID, "properties": {}, "instance_info": {}},
                "config": {"heartbeat_timeout": 300, "agent_token": token},
            }
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        assert request.match_info["uuid"] == NODE_UUID
        self.heartbeats.append(await request.json())
        self.heartbeat_headers.append(dict(request.headers))
        self.got_heartbeat.set()
        return web.Response(status=202)


class InventoryWithMac(FakeInventory):
    def __call__(self):
        data = super().__call__()
        data["interfaces"] = [{"name": "eth0", "mac_address": MAC}]
        return data


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: connections are refused


@pytest.fixture
async def fake_ironic(aiohttp_server):
    fake = FakeIronic(conflicts=1)
    server = await aiohttp_server(fake.app, host="127.0.0.1")
    fake.url = f"http://127.0.0.1:{server.port}"
    return fake


async def wait_for(event: asyncio.Event, seconds: float = 15) -> None:
    await asyncio.wait_for(event.wait(), seconds)


async def test_lookup_then_heartbeat_with_failover_and_409(tmp_path, fake_ironic, monkeypatch):
    monkeypatch.setattr(ironic, "CONFLICT_PAUSE", 0.05)
    monkeypatch.setattr(ironic, "HEARTBEAT_AFTER_COMMAND", 0.1)
    dead = f"http://127.0.0.1:{dead_port()}"
    run = await start(
        tmp_path / "state",
        inventory=InventoryWithMac(),
        agent_token=None,
        api_urls=(dead, fake_ironic.url),
        lookup_interval=0.05,
        advertise_host="127.0.0.1",
    )
    try:
        await wait_for(fake_ironic.got_heartbeat)
        lookup = fake_ironic.lookups[-1]
        assert lookup.query["addresses"] == MAC
        assert lookup.headers["X-OpenStack-Ironic-API-Version"] == "1.62"
        assert len(fake_ironic.lookups) == 2  # one 409, then the answer
        beat = fake_ironic.heartbeats[0]
        assert beat["callback_url"] == f"https://127.0.0.1:{run.server.port}"
        assert beat["agent_token"] == LOOKUP_TOKEN
        assert beat["agent_verify_ca"] == run.agent.identity.cert_pem
        assert beat["agent_version"]
        assert fake_ironic.heartbeat_headers[0]["X-OpenStack-Ironic-API-Version"] == "1.68"
        _, status = await run.get("/v1/status", token=None)
        assert status["mode"] == "active" and status["node_uuid"] == NODE_UUID
        # ironic drives the agent with the token from the lookup
        code, _ = await run.post({"name": "standby.sync"}, token=LOOKUP_TOKEN)
        assert code == 200
        code, _ = await run.post({"name": "standby.sync"}, token=TOKEN)
        assert code == 401
        # an async command's end is followed by a heartbeat soon after
        fake_ironic.got_heartbeat.clear()
        code, result = await run.post({"name": "standby.power_off"}, token=LOOKUP_TOKEN, wait=True)
        assert result["command_status"] == "SUCCEEDED"
        await wait_for(fake_ironic.got_heartbeat, 5)
        assert len(fake_ironic.heartbeats) == 2
    finally:
        await run.client.close()
        await run.server.stop()


async def test_lookup_gives_up_after_the_timeout(tmp_path):
    run = await start(
        tmp_path / "state",
        api_urls=(f"http://127.0.0.1:{dead_port()}",),
        lookup_interval=0.05,
        lookup_timeout=0.5,
    )
    try:
        with pytest.raises(LookupFailed):
            await asyncio.wait_for(run.server.ironic, 10)
    finally:
        await run.client.close()
        await run.server.stop()


async def test_passive_has_no_client(tmp_path):
    run = await start(tmp_path / "state")
    try:
        assert run.server.ironic is None
    finally:
        await run.client.close()
        await run.server.stop()


def test_callback_url_and_route_lookup():
    assert callback_url("192.0.2.5", 9999) == "https://192.0.2.5:9999"
    assert callback_url("2001:db8::5", 9999) == "https://[2001:db8::5]:9999"
    assert route_address("http://127.0.0.1:6385") == "127.0.0.1"
    assert route_address("http://[::1]:6385") in ("::1", None)  # None without IPv6


def test_insecure_is_explicit(tmp_path, caplog):
    from agent.config import Config
    from agent.daemon import build_agent
    from agent.power import RecordingPower
    from agent.tls import load_identity

    config = Config(api_urls=("https://192.0.2.1:6385",), insecure=True, state_dir=tmp_path)
    identity = load_identity(tmp_path, [])
    client = IronicClient(build_agent(config, identity, RecordingPower(), dict), 9999)
    assert client.ssl.verify_mode.name == "CERT_NONE"
    assert "NOT verified" in caplog.text
    secure = Config(api_urls=("https://192.0.2.1:6385",), state_dir=tmp_path)
    client = IronicClient(build_agent(secure, identity, RecordingPower(), dict), 9999)
    assert client.ssl.verify_mode.name == "CERT_REQUIRED"
