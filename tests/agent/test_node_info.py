"""poll.set_node_info / get_node_info, the token it carries, and the unclaimed agent."""

from __future__ import annotations

from tests.agent.conftest import TOKEN, start

NODE_INFO = {
    "node": {
        "uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123",
        "properties": {"root_device": {}},
        "instance_info": {"image_source": "http://example.invalid/img"},
    },
    "config": {"agent_token": "new-token-abc", "heartbeat_timeout": 300, "bmc_password": "hunter2"},
}


async def test_unclaimed_agent_serves_only_inventory_and_set_node_info(tmp_path, capsys):
    run = await start(tmp_path / "state", agent_token=None)
    try:
        status, result = await run.post({"name": "poll.get_hardware_info"}, token=None)
        assert status == 200 and result["command_status"] == "SUCCEEDED"
        for name in ("standby.sync", "poll.get_node_info", "log.collect_system_logs"):
            status, _ = await run.post({"name": name}, token=None)
            assert status == 401
        status, _ = await run.get("/v1/commands/", token=None)
        assert status == 401
        status, result = await run.post(
            {"name": "poll.set_node_info", "params": {"node_info": NODE_INFO}}, token=None
        )
        assert status == 200 and result["command_status"] == "SUCCEEDED"
        _, status_body = await run.get("/v1/status", token=None)
        assert status_body["claimed_by"] == "127.0.0.1"
        assert "CLAIMED by 127.0.0.1" in capsys.readouterr().out
        # From now on the token set by set_node_info is required, for everything.
        status, _ = await run.post({"name": "poll.get_hardware_info"}, token=None)
        assert status == 401
        status, _ = await run.post({"name": "standby.sync"}, token="new-token-abc")
        assert status == 200
        status, _ = await run.post(
            {"name": "poll.set_node_info", "params": {"node_info": NODE_INFO}}, token=None
        )
        assert status == 401  # a second claimant cannot take over
    finally:
        await run.client.close()
        await run.server.stop()


async def test_set_node_info_masks_secrets_and_node_info_alias(running):
    status, result = await running.post(
        {"name": "poll.node_info", "params": {"node_info": NODE_INFO}}
    )
    assert status == 200
    stored = result["command_result"]
    assert stored["node"]["uuid"] == NODE_INFO["node"]["uuid"]
    assert stored["config"]["agent_token"] == "******"
    assert stored["config"]["bmc_password"] == "******"
    _, got = await running.post({"name": "poll.get_node_info"}, token="new-token-abc")
    assert got["command_result"] == stored
    _, status_body = await running.get("/v1/status", token=None)
    assert status_body["node_uuid"] == NODE_INFO["node"]["uuid"]
    status, _ = await running.post({"name": "standby.sync"}, token=TOKEN)
    assert status == 401  # the token was replaced


async def test_set_node_info_rejects_malformed_input(running):
    bad = [
        {"node": "nope"},
        {"config": []},
        {"config": {"agent_token": 5}},
        {"config": {"agent_token": "******"}},
        {"config": {"heartbeat_timeout": -1}},
        {"config": {"tls_min_version": "1.0"}},
    ]
    for node_info in bad:
        status, result = await running.post(
            {"name": "poll.set_node_info", "params": {"node_info": node_info}}
        )
        assert status == 200
        assert result["command_status"] == "FAILED", node_info
        assert result["command_error"]["code"] == 400
    status, _ = await running.post({"name": "poll.set_node_info", "params": {}})
    assert status == 400  # missing required parameter
    status, _ = await running.post({"name": "standby.sync"})
    assert status == 200  # token unchanged by the failed attempts


async def test_tls_min_version_from_node_info_applies_to_new_connections(running):
    import ssl

    await running.post(
        {
            "name": "poll.set_node_info",
            "params": {"node_info": {"config": {"tls_min_version": "1.3"}}},
        }
    )
    assert running.agent.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3


def tls12_handshake(port: int, cert_pem: str) -> str:
    """A TLS 1.2-only client's handshake: the version it got, or why it was refused."""
    import socket
    import ssl

    from wire.tls import client_context

    context = client_context(cadata=cert_pem)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return str(tls.version())
    except ssl.SSLError as exc:
        return f"refused: {exc.reason}"


async def test_tls_min_version_from_node_info_outlives_a_restart(tmp_path):
    import asyncio

    state = tmp_path / "state"
    run = await start(state)
    try:
        port, cert = run.server.port, run.agent.identity.cert_pem
        assert await asyncio.to_thread(tls12_handshake, port, cert) == "TLSv1.2"
        body = {"node_info": {"config": {"tls_min_version": "1.3"}}}
        status, _ = await run.post({"name": "poll.set_node_info", "params": body})
        assert status == 200
        assert (await asyncio.to_thread(tls12_handshake, port, cert)).startswith("refused")
    finally:
        await run.client.close()
        await run.server.stop()
    again = await start(state)  # the same state directory: a restarted agent
    try:
        port = again.server.port
        refused = await asyncio.to_thread(tls12_handshake, port, cert)
        assert refused == "refused: TLSV1_ALERT_PROTOCOL_VERSION"
        status, _ = await again.get("/v1/status", token=None)  # TLS 1.3 still served
        assert status == 200
    finally:
        await again.client.close()
        await again.server.stop()


def test_masking_reaches_lists_under_secret_names():
    from agent.core import masked

    info = {
        "node": {"driver_info": {"passwords": ["a", {"x": "b"}], "ports": [{"token": "t"}]}},
        "config": {"secrets": [["deep"]], "hosts": ["h1"]},
    }
    out = masked(info)
    assert out["node"]["driver_info"]["passwords"] == ["******", {"x": "******"}]
    assert out["node"]["driver_info"]["ports"] == [{"token": "******"}]
    assert out["config"]["secrets"] == [["******"]]
    assert out["config"]["hosts"] == ["h1"]
