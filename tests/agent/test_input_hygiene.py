"""What the agent refuses before a request reaches a route, over real TLS on loopback:
unparsable requests (answered with a fixed fault that quotes nothing and counted towards
the hold-off), HTTP versions other than 1.0/1.1, and JSON strings that are not Unicode."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest

from tests.agent.conftest import TOKEN, Running
from wire.tls import client_context

SECRET = "Zq7-secret-token-never-shown-9xK"


def exchange(run: Running, payload: bytes) -> bytes:
    """Send raw bytes over TLS; everything the agent sends back until it closes."""
    context = client_context(cadata=run.agent.identity.cert_pem)
    port = run.server.port
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(payload)
        received = b""
        while True:
            try:
                data = tls.recv(65536)
            except (ConnectionError, OSError):
                break
            if not data:
                break
            received += data
        return received


def head_and_fault(response: bytes) -> tuple[bytes, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head, json.loads(body)


MALFORMED = {
    "oversized header": (
        f"GET /v1/commands/ HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {SECRET}"
        f"{'x' * 9000}\r\n\r\n"
    ).encode(),
    "control character in a header": (
        f"GET /v1/commands/ HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {SECRET}\x01\r\n\r\n"
    ).encode(),
    "space in a header name": (
        f"GET /v1/commands/ HTTP/1.1\r\nHost: a\r\nAuthori zation: Bearer {SECRET}\r\n\r\n"
    ).encode(),
    "bad character in the query": (
        f"GET /v1/commands/?agent_token={SECRET}\x7f HTTP/1.1\r\nHost: a\r\n\r\n"
    ).encode(),
    "bad content length": (
        f"POST /v1/commands/ HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {SECRET}\r\n"
        "Content-Length: x\r\n\r\n"
    ).encode(),
    "unknown HTTP/1 version": f"GET /v1/status?agent_token={SECRET} HTTP/1.2\r\n\r\n".encode(),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_unparsable_requests_get_a_fixed_json_fault_quoting_nothing(running, case):
    response = await asyncio.to_thread(exchange, running, MALFORMED[case])
    head, fault = head_and_fault(response)
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Content-Type: application/json" in head and b"Connection: close" in head
    assert fault["faultcode"] == "Client"
    assert fault["faultstring"].startswith("Bad HTTP request: ")
    assert SECRET.encode() not in response and b"xxxx" not in response
    assert running.agent.guard.summary() == {"request": 1}


async def test_unparsable_requests_count_towards_the_hold_off(running):
    for _ in range(10):
        await asyncio.to_thread(exchange, running, MALFORMED["oversized header"])
    assert running.agent.guard.retry_after("127.0.0.1") > 0
    status, body = await running.get("/v1/commands/")  # even with the right token
    assert status == 429 and body["faultstring"]


async def test_no_token_bytes_in_any_log(running, caplog):
    """Every logger at every level, aiohttp's included, while the token travels right,
    wrong, in an oversized header and in malformed requests."""
    caplog.set_level(logging.DEBUG)
    running.agent.set_token(SECRET)
    status, _ = await running.get("/v1/commands/", token=SECRET)
    assert status == 200
    async with running.client.get(
        f"{running.base}/v1/commands/", headers={"Authorization": f"Bearer {SECRET}"}
    ) as response:
        assert response.status == 200
    status, _ = await running.get("/v1/commands/", token=SECRET + "-wrong")
    assert status == 401
    for payload in MALFORMED.values():
        await asyncio.to_thread(exchange, running, payload)
    text = caplog.text + "".join(
        f"{r.getMessage()}{r.exc_text or ''}{r.args!r}" for r in caplog.records
    )
    assert "refused request from 127.0.0.1: Bad HTTP request" in text  # the logs were seen
    assert SECRET not in text and SECRET[:8] not in text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    "request_line",
    [b"GET /v1/status\r\n\r\n", b"GET /v1/status HTTP/2.0\r\nHost: a\r\n\r\n"],
    ids=["HTTP/0.9", "HTTP/2.0"],
)
async def test_other_http_versions_are_refused(running, request_line):
    response = await asyncio.to_thread(exchange, running, request_line)
    assert response == b""  # closed, unanswered: not "HTTP/0.9 200"
    assert running.agent.guard.summary() == {"request": 1}
    status, _ = await running.get("/v1/status", token=None)  # over HTTP/1.1, still served
    assert status == 200


def node_info_body(uuid_json: str) -> bytes:
    return (
        '{"name": "poll.set_node_info", "params": {"node_info": '
        f'{{"node": {{"uuid": {uuid_json}}}, "config": {{}}}}}}}}'
    ).encode()


@pytest.mark.parametrize(
    "raw",
    [
        node_info_body('"\\ud800"'),  # a JSON escape of a lone surrogate
        node_info_body('"abc\\udfff"'),
        node_info_body('"ok"').replace(b'"ok"', b'"\xed\xa0\x80"'),  # one encoded in UTF-8
        node_info_body('"ok", "\\ud83d": 1'),  # in a key
    ],
    ids=["escaped", "escaped low", "encoded", "key"],
)
async def test_strings_that_are_not_unicode_are_refused(running, raw):
    status, fault = await running.post(None, raw=raw)
    assert status == 400, fault
    assert fault["faultstring"].startswith("Invalid JSON body: ")
    _, status_body = await running.get("/v1/status", token=None)
    assert status_body["node_uuid"] is None
    assert running.agent.node_info is None


async def test_escaped_surrogate_pairs_are_unicode(running):
    status, _ = await running.post(None, raw=node_info_body('"node-\\ud83d\\ude00"'))
    assert status == 200
    _, status_body = await running.get("/v1/status", token=None)
    assert status_body["node_uuid"] == "node-\U0001f600"


async def test_a_wrong_token_in_a_unicode_error_is_still_a_401(running):
    status, fault = await running.post(None, raw=node_info_body('"\\ud800"'), token="wrong")
    assert status == 401 and fault["faultstring"] == "401 Unauthorized: Token invalid."
    assert TOKEN not in json.dumps(fault)
