"""A malicious agent: crafted HTTP answers over real TLS on 127.0.0.1.

Each must end as a ``ProtocolError`` (exit 6) with a clean one-line message, and nothing
may escape from the connection's asyncio callbacks (the loop's exception handler would
see it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from agent.tls import Identity, server_context
from conductor.client import AgentClient, Options, Pool, ProtocolError, Trust, Unauthenticated
from tests.conductor.conftest import TOKEN
from wire.certs import fingerprint

Writer = Callable[[asyncio.StreamWriter], Awaitable[None]]
SMALL_BODY = 64 * 1024  # the pool's body limit in these tests


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

    async def start(answer: Writer, timeout: float = 10.0) -> tuple[Malicious, AgentClient]:
        pem = test_pki.node_cert.read_text()
        identity = Identity(test_pki.node_cert, test_pki.node_key, pem, fingerprint(pem), False)
        script = Malicious(answer)
        server = await asyncio.start_server(
            script.handle, "127.0.0.1", 0, ssl=server_context(identity)
        )
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        pool = Pool(max_body=SMALL_BODY)
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


async def protocol_error(client: AgentClient) -> str:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ProtocolError) as error:
        await client.status()
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
    assert f"larger than {SMALL_BODY} bytes" in await protocol_error(client)


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
    assert f"larger than {SMALL_BODY} bytes" in await protocol_error(client)
