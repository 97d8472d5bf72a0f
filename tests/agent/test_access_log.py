"""The access log: off unless asked for; one line per answered request, never a token."""

from __future__ import annotations

import logging

from tests.agent.conftest import TOKEN, start


def access_records(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "agent.access"]


async def test_no_access_log_by_default(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    run = await start(tmp_path / "state")
    try:
        status, _ = await run.get("/v1/status")
        assert status == 200
    finally:
        await run.client.close()
        await run.server.stop("test finished")
    assert access_records(caplog) == []


async def test_each_answered_request_is_one_line_with_its_client_and_no_token(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    run = await start(tmp_path / "state", access_log=True)
    port = run.server.port
    try:
        headers = {"User-Agent": "tacet-conductor/0.1.0 (ironic conductor 127.0.0.1:8091)"}
        url = f"{run.base}/v1/commands/?agent_token={TOKEN}"
        async with run.client.get(url, headers=headers) as response:
            assert response.status == 200
        status, _ = await run.get("/v1/nowhere", token=None)
        assert status == 404
    finally:
        await run.client.close()
        await run.server.stop("test finished")
    first, second = access_records(caplog)
    assert first.levelno == logging.INFO
    assert (first.peer, first.method, first.path, first.status) == (
        "127.0.0.1",
        "GET",
        "/v1/commands/",
        200,
    )
    assert first.user_agent == "tacet-conductor/0.1.0 (ironic conductor 127.0.0.1:8091)"
    assert first.local == f"127.0.0.1:{port}"
    assert f'127.0.0.1 -> {first.local} "GET /v1/commands/" 200 ' in first.getMessage()
    assert (second.path, second.status) == ("/v1/nowhere", 404)
    assert TOKEN not in caplog.text
