"""A malicious agent: crafted HTTP answers over real TLS on 127.0.0.1.

Each must end as a ``ProtocolError`` (exit 6) with a clean one-line message, and nothing
may escape from the connection's asyncio callbacks (the loop's exception handler would
see it).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable

import pytest

from agent.tls import Identity, server_context
from conductor.client import (
    INVENTORY_LIMIT,
    MAX_BODY,
    MIB,
    RESULT_LIMIT,
    STATUS_LIMIT,
    AgentClient,
    Options,
    Pool,
    ProtocolError,
    Trust,
    Unauthenticated,
    size_text,
)
from tests.conductor.conftest import TOKEN
from tests.conductor.test_cli import CLI, ROOT
from wire.certs import fingerprint

Writer = Callable[[asyncio.StreamWriter], Awaitable[None]]
SMALL_BODY = 64 * 1024  # the pool's body limit in these tests
ENDLESS = 2 * 1024 * 1024 * 1024  # what an "endless" answer sends at most


class Malicious:
    """Answers every request with ``answer(writer)``, then waits for the client to leave."""

    def __init__(self, answer: Writer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                await self.answer(writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


def raw(data: bytes) -> Writer:
    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()

    return answer


@pytest.fixture
async def malicious(test_pki):
    """malicious(answer) -> (server, client); the client's pool has a 64 KiB body limit."""
    loop = asyncio.get_running_loop()
    escaped: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: escaped.append(context))
    servers, pools = [], []

    async def start(
        answer: Writer, timeout: float = 10.0, max_body: int = SMALL_BODY
    ) -> tuple[Malicious, AgentClient]:
        pem = test_pki.node_cert.read_text()
        identity = Identity(test_pki.node_cert, test_pki.node_key, pem, fingerprint(pem), False)
        script = Malicious(answer)
        server = await asyncio.start_server(
            script.handle, "127.0.0.1", 0, ssl=server_context(identity)
        )
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        pool = Pool(max_body=max_body)
        pools.append(pool)
        options = Options(Trust(cafile=test_pki.ca_pem), TOKEN, timeout=timeout, retries=0)
        return script, AgentClient(f"127.0.0.1:{port}", options, pool=pool)

    yield start
    for pool in pools:
        await pool.close()
    for server in servers:
        server.close()
        await server.wait_closed()
    await asyncio.sleep(0.05)  # let closed transports report anything they had
    loop.set_exception_handler(None)
    assert escaped == [], "an exception escaped from an asyncio callback"


def assert_clean(error: ProtocolError) -> str:
    message = str(error)
    assert error.exit_code == 6
    assert all(c.isprintable() for c in message), repr(message)
    return message


async def protocol_error(
    client: AgentClient, call: Callable[[], Awaitable[object]] | None = None
) -> str:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ProtocolError) as error:
        await (call or client.status)()
    assert loop.time() - started < 5, "it should fail as the bytes arrive, not time out"
    return assert_clean(error.value)


HEAD = b"HTTP/1.1 200 OK\r\n"


async def test_non_ascii_digit_in_content_length(malicious):
    # "²" is a digit to str.isdigit(); here it is bytes C2 B2 on the wire
    _server, client = await malicious(raw(HEAD + "Content-Length: ²\r\n\r\n{}".encode()))
    assert "Content-Length" in await protocol_error(client)


async def test_non_ascii_digit_in_a_chunk_size(malicious):
    answer = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + "²\r\n{}\r\n0\r\n\r\n".encode()
    _server, client = await malicious(raw(answer))
    assert "chunk header" in await protocol_error(client)


async def test_huge_chunk_size_fails_as_the_data_arrives(malicious):
    """2**64+7 bytes announced, then more than the limit sent and the connection held: the
    client stops at the limit instead of buffering towards the announced size."""
    size = b"%x" % (2**64 + 7)

    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\n")
        for _ in range(4):
            writer.write(b"x" * SMALL_BODY)
            await writer.drain()

    _server, client = await malicious(answer)
    assert "larger than 64 KiB, the limit for GET /v1/status" in await protocol_error(client)


async def test_chunk_size_with_a_huge_digit_count(malicious):
    answer = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"0" * 5000 + b"1\r\nx\r\n0\r\n\r\n"
    _server, client = await malicious(raw(answer))
    message = await protocol_error(client)
    assert "chunk header" in message and len(message) < 300


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        (b"Content-Encoding: gz\x1b[2J\x07ip\x7f", "\\x1b[2J\\x07ip\\x7f"),
        (b"Content-Encoding: gz\rip", "\\r"),  # a bare CR inside a header value
        (b"Content-Encoding: \x1b]0;owned\x07", "\\x1b]0;owned\\x07"),
    ],
)
async def test_control_characters_in_header_values_are_escaped(malicious, header, shown):
    _server, client = await malicious(raw(HEAD + header + b"\r\nContent-Length: 2\r\n\r\n{}"))
    assert shown in await protocol_error(client)


async def test_control_characters_in_other_answers_are_escaped(malicious):
    """Retry-After and the faultstring end up in Unauthenticated's message: escaped too."""
    body = b'{"faultstring": "held\\u001b[2J\\nnext line"}'
    answer = (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\x1b[31m\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    _server, client = await malicious(raw(answer))
    with pytest.raises(Unauthenticated) as error:
        await client.status()
    message = str(error.value)
    assert all(c.isprintable() for c in message), repr(message)
    assert "\\x1b[2J\\nnext line" in message and "3\\x1b[31m" in message


async def test_content_length_with_transfer_encoding(malicious):
    answer = HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    _server, client = await malicious(raw(answer))
    assert "both Content-Length and Transfer-Encoding" in await protocol_error(client)


async def test_a_later_keep_alive_does_not_undo_connection_close(malicious):
    body = b'{"started_at": 1.0, "version": "t", "mode": "passive"}'
    answer = (
        HEAD + b"Connection: close\r\nConnection: keep-alive\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    server, client = await malicious(raw(answer))
    for _ in range(2):
        assert (await client.status()).version == "t"
        assert not client.pool.idle  # not kept for the next request
    assert server.connections == 2


async def test_too_many_header_fields(malicious):
    fields = b"".join(b"X-Field-%d: v\r\n" % i for i in range(150))
    _server, client = await malicious(raw(HEAD + fields + b"Content-Length: 2\r\n\r\n{}"))
    assert "more than 100 header fields" in await protocol_error(client)


async def test_oversized_header(malicious):
    answer = HEAD + b"X-Big: " + b"a" * (70 * 1024) + b"\r\nContent-Length: 2\r\n\r\n{}"
    _server, client = await malicious(raw(answer))
    assert "response head larger than" in await protocol_error(client)


@pytest.mark.parametrize(
    "answer",
    [
        HEAD + b"Content-Length: %d\r\n\r\n" % (SMALL_BODY + 1) + b"x" * SMALL_BODY,
        HEAD + b"Connection: close\r\n\r\n" + b"x" * (2 * SMALL_BODY),  # until the end
        HEAD
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % SMALL_BODY
        + b"x" * SMALL_BODY
        + b"\r\n10\r\n"
        + b"y" * 16,
    ],
    ids=["content-length", "unframed", "chunked"],
)
async def test_body_over_the_limit(malicious, answer):
    _server, client = await malicious(raw(answer))
    assert "larger than 64 KiB, the limit for GET /v1/status" in await protocol_error(client)


# -- answers bounded per call, with the pool's ceiling as it ships -------------------------
def endless_chunks(chunk: bytes) -> Writer:
    """A chunked answer that never ends (until the client leaves)."""

    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(ENDLESS // len(chunk)):  # far past any limit: endless to the client
            if writer.is_closing():
                return
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            await asyncio.sleep(0)  # drain() may not wait once the client has left

    return answer


def json_string_status(size: int, framing: str) -> Writer:
    """A valid status whose version is a JSON string of ``size`` bytes, sent as it is
    produced: framed by Content-Length, or by the end of the connection."""
    before, after = b'{"started_at": 1.0, "mode": "passive", "version": "', b'"}'

    async def answer(writer: asyncio.StreamWriter) -> None:
        length = len(before) + size + len(after)
        head = (
            b"Content-Length: %d\r\n" % length if framing == "length" else b"Connection: close\r\n"
        )
        writer.write(HEAD + head + b"\r\n" + before)
        piece = b"a" * (256 * 1024)
        for _ in range(size // len(piece)):
            if writer.is_closing():
                return
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0)
        writer.write(after)
        await writer.drain()
        if framing != "length":
            writer.close()

    return answer


async def test_an_endless_chunked_status_stops_at_the_status_limit(malicious):
    _server, client = await malicious(endless_chunks(b"x" * 4096), max_body=MAX_BODY)
    message = await protocol_error(client)
    assert f"larger than {size_text(STATUS_LIMIT)}, the limit for GET /v1/status" in message


@pytest.mark.parametrize("framing", ["length", "unframed"])
async def test_a_200_mb_json_string_as_status_is_refused(malicious, framing):
    _server, client = await malicious(json_string_status(200 * MIB, framing), max_body=MAX_BODY)
    assert "the limit for GET /v1/status" in await protocol_error(client)


def command_answer(command_result: dict) -> Writer:
    body = json.dumps(
        {
            "id": "c-1",
            "command_name": "x",
            "command_status": "SUCCEEDED",
            "command_error": None,
            "command_result": command_result,
        }
    ).encode()
    return raw(HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


async def test_an_oversized_command_result_is_refused(malicious):
    """2 MiB is past an ordinary result's limit (1 MiB) but within an inventory's."""
    big = {"blob": "b" * (2 * MIB)}
    _server, client = await malicious(command_answer(big), max_body=MAX_BODY)
    message = await protocol_error(client, client.sync)
    assert f"larger than {size_text(RESULT_LIMIT)}, the limit for standby.sync results" in message
    inventory = await client.get_hardware_info()
    assert len(inventory.raw["blob"]) == 2 * MIB


async def test_an_endless_inventory_stops_at_the_inventory_limit(malicious):
    _server, client = await malicious(endless_chunks(b"y" * 65536), max_body=MAX_BODY)
    message = await protocol_error(client, client.get_hardware_info)
    assert (
        f"larger than {size_text(INVENTORY_LIMIT)}, the limit for poll.get_hardware_info" in message
    )


async def test_endless_informational_answers(malicious):
    async def answer(writer: asyncio.StreamWriter) -> None:
        for _ in range(ENDLESS // 1024):
            if writer.is_closing():
                return
            writer.write(b"HTTP/1.1 102 Processing\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0)

    _server, client = await malicious(answer)
    assert "informational" in await protocol_error(client)


# -- the whole command as an operator runs it: exit status and memory ----------------------
def run_tacet(*args: str) -> tuple[int, str, int]:
    """``tacet`` in a subprocess: (exit status, stderr, peak RSS in KiB)."""
    process = subprocess.Popen(
        [sys.executable, "-c", CLI, *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    err = process.stderr.read().decode()
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, err, usage.ru_maxrss


async def tacet_status(malicious, test_pki, answer: Writer) -> tuple[int, str, int]:
    _script, client = await malicious(answer, max_body=MAX_BODY)
    args = ("status", client.address, "--cafile", str(test_pki.ca_pem), "--retries", "0")
    return await asyncio.get_running_loop().run_in_executor(None, run_tacet, *args)


STATUS = json.dumps({"started_at": 1.0, "version": "t", "mode": "passive"}).encode()


@pytest.mark.parametrize(
    "answer",
    [endless_chunks(b"z" * 16384), json_string_status(200 * MIB, "unframed")],
    ids=["endless-chunked", "200-MB-string"],
)
async def test_tacet_status_memory_stays_bounded(malicious, test_pki, answer):
    """Peak RSS of ``tacet status`` against a malicious agent, compared with the same
    command against one answering a normal status: under 100 MiB more, and exit 6."""
    normal = raw(HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(STATUS), STATUS))
    code, err, baseline = await tacet_status(malicious, test_pki, normal)
    assert code == 0, err
    code, err, peak = await tacet_status(malicious, test_pki, answer)
    assert code == 6, err
    assert "the limit for GET /v1/status" in err
    assert (peak - baseline) * 1024 < 100 * MIB, (baseline, peak)
