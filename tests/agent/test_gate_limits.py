"""The gate under pressure: caps, eviction, and the handshake, header and idle timeouts."""

from __future__ import annotations

import asyncio
import contextlib
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
    assert (defaults.handshake_timeout, defaults.header_timeout, defaults.idle_timeout) == (
        10.0,
        10.0,
        75.0,
    )
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "limits.toml").write_text("max-connections = 2000\nidle-timeout = 30\n")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("tacet.header-timeout=2.5\n")
    config = load_config(cmdline, tmp_path / "etc", tmp_path / "state")
    assert (config.max_connections, config.idle_timeout, config.header_timeout) == (
        2000,
        30.0,
        2.5,
    )
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
