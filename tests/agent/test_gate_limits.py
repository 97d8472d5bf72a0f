"""The gate under pressure: caps, eviction, and the handshake, header, body and idle timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from tests.agent.conftest import TOKEN, start
from wire.tls import client_context

STATUS = b"GET /v1/status HTTP/1.1\r\nHost: agent\r\n\r\n"


@pytest.fixture
async def limited(tmp_path, request):
    run = await start(tmp_path / "state", **request.param)
    yield run
    await run.client.close()
    await run.server.stop("test finished")


def tls(run):
    return client_context(cadata=run.agent.identity.cert_pem)


async def connect(run, source="127.0.0.1", use_tls=True):
    return await asyncio.open_connection(
        "127.0.0.1", run.server.port, ssl=tls(run) if use_tls else None, local_addr=(source, 0)
    )


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the agent ends the connection (EOF or reset); fails after ``seconds``."""
    started = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        while await asyncio.wait_for(reader.read(65536), seconds):
            pass
    return time.monotonic() - started


async def answered(reader, writer) -> bytes:
    writer.write(STATUS)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    return head


@pytest.mark.parametrize("limited", [{"handshake_timeout": 0.5}], indirect=True)
async def test_a_connection_that_never_starts_tls_is_closed_after_the_handshake_timeout(limited):
    reader, writer = await connect(limited, use_tls=False)
    assert 0.3 < await closed_within(reader, 5) < 3
    writer.close()
    assert limited.agent.guard.summary().get("handshake") == 1


@pytest.mark.parametrize("limited", [{"header_timeout": 0.5}], indirect=True)
async def test_a_slow_request_head_is_cut_off_and_a_prompt_one_answered(limited):
    reader, writer = await connect(limited)
    writer.write(b"GET /v1/status HTTP/1.1\r\nHost: ag")  # and nothing more
    assert 0.3 < await closed_within(reader, 5) < 3
    writer.close()
    prompt_reader, prompt_writer = await connect(limited)
    await answered(prompt_reader, prompt_writer)
    prompt_writer.close()
    assert limited.agent.guard.summary().get("connection") == 1


@pytest.mark.parametrize("limited", [{"header_timeout": 0.5}], indirect=True)
async def test_the_header_timeout_applies_to_the_next_request_on_a_kept_connection(limited):
    reader, writer = await connect(limited)
    await answered(reader, writer)
    await reader.readexactly(1)  # the body has begun; the rest is drained below
    writer.write(b"GET /v1/status HTTP/1.1\r\n")  # the second request's head, left unfinished
    assert await closed_within(reader, 5) < 3
    writer.close()


@pytest.mark.parametrize("limited", [{"idle_timeout": 0.5}], indirect=True)
async def test_an_idle_kept_connection_is_closed_after_the_idle_timeout(limited):
    reader, writer = await connect(limited)
    await answered(reader, writer)
    assert await closed_within(reader, 5) < 3
    writer.close()


@pytest.mark.parametrize("limited", [{"max_connections_per_peer": 3}], indirect=True)
async def test_a_conductor_behind_a_storms_address_still_gets_its_turn(limited):
    storm = [await connect(limited, "127.0.0.2", use_tls=False) for _ in range(3)]
    reader, writer = await connect(limited, "127.0.0.2")  # the same address, as behind a NAT
    await answered(reader, writer)
    assert await closed_within(storm[0][0], 2) < 1  # the address's oldest idle one gave way
    # Now the address holds two idle connections and one in use; two more idle ones:
    more = [await connect(limited, "127.0.0.2", use_tls=False) for _ in range(2)]
    assert await closed_within(storm[1][0], 2) < 1
    assert await closed_within(storm[2][0], 2) < 1
    assert not writer.transport.is_closing()  # the one that sent a request stays
    writer.close()
    for _, other in storm + more:
        other.close()


@pytest.mark.parametrize("limited", [{"max_connections_per_peer": 2}], indirect=True)
async def test_a_peer_whose_connections_are_all_in_use_is_refused_a_third(limited):
    kept = []
    for _ in range(2):
        reader, writer = await connect(limited, "127.0.0.2")
        await answered(reader, writer)
        kept.append(writer)
    reader, writer = await connect(limited, "127.0.0.2", use_tls=False)
    assert await closed_within(reader, 2) < 1  # refused at once
    writer.close()
    other_reader, other_writer = await connect(limited, "127.0.0.3")
    await answered(other_reader, other_writer)
    other_writer.close()
    for kept_writer in kept:
        assert not kept_writer.transport.is_closing()
        kept_writer.close()


@pytest.mark.parametrize("limited", [{"max_connections": 4}], indirect=True)
async def test_a_full_agent_closes_a_storm_connection_for_a_new_peer(limited):
    storm = [await connect(limited, "127.0.0.2", use_tls=False) for _ in range(4)]
    await asyncio.sleep(0.1)
    assert len(limited.server.connections) == 4
    reader, writer = await connect(limited, "127.0.0.1")
    await answered(reader, writer)
    assert await closed_within(storm[0][0], 2) < 1  # the storm's oldest gave way
    # The storm's own next connection finds nothing lighter to displace: refused.
    again_reader, again_writer = await connect(limited, "127.0.0.2", use_tls=False)
    assert await closed_within(again_reader, 2) < 1
    again_writer.close()
    summary = limited.agent.status()["connections"]
    assert (summary["max"], summary["refused"], summary["evicted"]) == (4, 1, 1), summary
    assert summary["open"] == 4  # the storm's three left and the conductor's
    writer.close()
    for _, storm_writer in storm:
        storm_writer.close()


@pytest.mark.parametrize("limited", [{"max_connections": 2}], indirect=True)
async def test_connections_that_sent_a_request_are_not_displaced(limited):
    kept = []
    for _ in range(2):
        reader, writer = await connect(limited, "127.0.0.2")
        await answered(reader, writer)
        kept.append((reader, writer))
    reader, writer = await connect(limited, "127.0.0.3", use_tls=False)
    assert await closed_within(reader, 2) < 1  # refused: both slots are in use
    writer.close()
    for _, writer in kept:
        assert not writer.transport.is_closing()
        writer.close()


def test_the_limits_are_settings_with_their_documented_defaults(tmp_path):
    from agent.config import Config, ConfigError, load_config

    defaults = Config()
    assert (defaults.max_connections, defaults.max_connections_per_peer) == (512, 64)
    assert (
        defaults.handshake_timeout,
        defaults.header_timeout,
        defaults.body_timeout,
        defaults.idle_timeout,
    ) == (10.0, 10.0, 10.0, 75.0)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "limits.toml").write_text("max-connections = 2000\nidle-timeout = 30\n")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("tacet.header-timeout=2.5 tacet.body-timeout=20\n")
    config = load_config(cmdline, tmp_path / "etc", tmp_path / "state")
    assert (
        config.max_connections,
        config.idle_timeout,
        config.header_timeout,
        config.body_timeout,
    ) == (2000, 30.0, 2.5, 20.0)
    cmdline.write_text("tacet.max-connections-per-peer=0\n")
    with pytest.raises(ConfigError, match="max-connections-per-peer=0"):
        load_config(cmdline, tmp_path / "etc", tmp_path / "state")


@pytest.mark.parametrize("limited", [{"header_timeout": 0.5}], indirect=True)
async def test_a_body_sent_after_100_continue_is_not_taken_for_a_slow_head(limited):
    body = b'{"name": "poll.get_hardware_info", "params": {}}'
    reader, writer = await connect(limited)
    writer.write(
        b"POST /v1/commands/?agent_token=" + TOKEN.encode() + b" HTTP/1.1\r\nHost: agent\r\n"
        b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(body[:10])
    await asyncio.sleep(1.0)  # longer than the header timeout, in the body
    writer.write(body[10:])
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    writer.close()


def post_head(body_header: bytes, wait: bool = False) -> bytes:
    query = b"agent_token=" + TOKEN.encode() + (b"&wait=true" if wait else b"")
    return (
        b"POST /v1/commands/?" + query + b" HTTP/1.1\r\nHost: agent\r\n"
        b"Content-Type: application/json\r\n" + body_header + b"\r\n\r\n"
    )


async def dribble(writer: asyncio.StreamWriter, data: bytes, pause: float) -> None:
    """A byte at a time, until the agent closes the connection."""
    with contextlib.suppress(ConnectionError):
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(pause)


async def timed_out_answer(reader: asyncio.StreamReader) -> bytes:
    """The 408 the agent sends before closing; the connection must then end."""
    answer = await asyncio.wait_for(reader.read(65536), 5)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b"Connection: close" in answer and b'"faultstring"' in answer
    assert await closed_within(reader, 2) < 1
    return answer


def body_refusals(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "no complete request body" in r.getMessage()]


@pytest.mark.parametrize("limited", [{"body_timeout": 0.5}], indirect=True)
async def test_a_dribbled_body_is_cut_off_with_a_408_and_one_log_line(limited, caplog):
    body = b'{"name": "poll.get_hardware_info", "params": {}}'
    reader, writer = await connect(limited)
    started = time.monotonic()
    writer.write(post_head(b"Content-Length: " + str(len(body)).encode()))
    sender = asyncio.create_task(dribble(writer, body, 0.1))  # 5 s for the whole body
    answer = await timed_out_answer(reader)
    assert 0.4 < time.monotonic() - started < 3
    assert b"Request body not received within 0.5 s" in answer
    await sender
    writer.close()
    assert limited.agent.guard.summary().get("connection") == 1
    (refusal,) = body_refusals(caplog)
    assert refusal.levelno == logging.WARNING and refusal.exc_info is None
    assert "POST /v1/commands/" in refusal.getMessage()
    assert TOKEN not in caplog.text and "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("limited", [{"body_timeout": 0.5}], indirect=True)
async def test_a_chunked_body_that_stops_mid_chunk_is_cut_off(limited, caplog):
    reader, writer = await connect(limited)
    writer.write(post_head(b"Transfer-Encoding: chunked") + b'30\r\n{"name": "poll')
    await timed_out_answer(reader)
    writer.close()
    assert limited.agent.guard.summary().get("connection") == 1
    assert len(body_refusals(caplog)) == 1
    assert TOKEN not in caplog.text and not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("limited", [{"body_timeout": 0.5}], indirect=True)
async def test_a_chunked_body_that_never_sends_its_last_chunk_is_cut_off(limited, caplog):
    body = b'{"name": "poll.get_hardware_info", "params": {}}'
    reader, writer = await connect(limited)
    chunk = f"{len(body):x}\r\n".encode() + body + b"\r\n"
    writer.write(post_head(b"Transfer-Encoding: chunked") + chunk)  # no "0\r\n\r\n"
    await timed_out_answer(reader)
    writer.close()
    assert len(body_refusals(caplog)) == 1


@pytest.mark.parametrize("limited", [{"body_timeout": 0.5}], indirect=True)
async def test_chunked_framing_that_breaks_after_the_head_is_cut_off(limited, caplog):
    # aiohttp's parser fails, but its 400 waits for the request under way, whose body
    # never completes: only the deadline ends it.
    reader, writer = await connect(limited)
    writer.write(post_head(b"Transfer-Encoding: chunked"))
    await asyncio.sleep(0.1)
    writer.write(b'5\r\n{"nam\r\nzz\r\n')
    await timed_out_answer(reader)
    writer.close()
    assert limited.agent.guard.summary() == {"connection": 1}
    assert len(body_refusals(caplog)) == 1
    assert TOKEN not in caplog.text and not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("limited", [{"body_timeout": 5}], indirect=True)
async def test_chunked_framing_that_breaks_with_the_head_is_a_400_at_once(limited, caplog):
    reader, writer = await connect(limited)
    writer.write(post_head(b"Transfer-Encoding: chunked") + b'5\r\n{"nam\r\nzz\r\n')
    answer = await asyncio.wait_for(reader.read(65536), 3)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"chunked framing" in answer
    assert await closed_within(reader, 2) < 1
    writer.close()
    assert limited.agent.guard.summary().get("request") == 1
    assert TOKEN not in caplog.text and not [r for r in caplog.records if r.exc_info]
    assert not body_refusals(caplog)


@pytest.mark.parametrize("limited", [{"body_timeout": 1.0}], indirect=True)
async def test_a_body_within_the_timeout_is_served_however_it_is_split(limited):
    body = b'{"name": "poll.get_hardware_info", "params": {}}'
    reader, writer = await connect(limited)
    writer.write(post_head(b"Transfer-Encoding: chunked"))
    for part in (body[:20], body[20:]):
        await asyncio.sleep(0.3)
        writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
    writer.write(b"0\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    writer.close()
    assert "connection" not in limited.agent.guard.summary()


@pytest.fixture
async def slow_command(tmp_path):
    """An agent whose inventory takes longer than its body timeout to collect."""

    def slow_inventory():
        time.sleep(1.5)
        return {"interfaces": [], "disks": [], "hostname": "node-1"}

    run = await start(tmp_path / "state", inventory=slow_inventory, body_timeout=0.5)
    yield run
    await run.client.close()
    await run.server.stop("test finished")


async def test_the_body_timeout_ends_with_the_body_not_with_the_answer(slow_command):
    body = b'{"name": "poll.get_hardware_info", "params": {}}'
    reader, writer = await connect(slow_command)
    writer.write(post_head(b"Content-Length: " + str(len(body)).encode(), wait=True))
    await asyncio.sleep(0.2)  # the body after its head: its deadline is armed
    writer.write(body)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200"), head
    writer.close()
    assert "connection" not in slow_command.agent.guard.summary()


@pytest.mark.parametrize("limited", [{"body_timeout": 0.5}], indirect=True)
async def test_an_unread_body_still_due_after_the_answer_is_cut_off_without_another(
    limited, caplog
):
    reader, writer = await connect(limited)
    writer.write(b"GET /v1/status HTTP/1.1\r\nHost: agent\r\nContent-Length: 1000\r\n\r\nab")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    rest = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), 3):
            rest += chunk
    assert b"HTTP/1.1" not in rest  # the status body, and no second answer
    writer.close()
    assert limited.agent.guard.summary().get("connection") == 1
    assert len(body_refusals(caplog)) == 1
