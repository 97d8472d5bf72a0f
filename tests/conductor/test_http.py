"""The client's own HTTP/1.1 path: the response reader, and connections over real TLS on
loopback (kept alive, closed by the agent, chunked and unframed answers, errors)."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable

import pytest

from agent.tls import Identity, server_context
from conductor.client import (
    AgentClient,
    BadHttp,
    Options,
    Pool,
    ProtocolError,
    ResponseReader,
    Trust,
    Unauthenticated,
    Unreachable,
    Untrusted,
)
from tests.conductor.conftest import TOKEN
from wire import __version__
from wire.certs import fingerprint

STATUS = {"started_at": 1.0, "version": "t", "mode": "passive"}
RESULT = {
    "id": "r-1",
    "command_name": "sync",
    "command_status": "SUCCEEDED",
    "command_error": None,
    "command_result": None,
}


def feed_bytewise(reader: ResponseReader, data: bytes):
    """Feed one byte at a time; the response must come exactly with the last byte."""
    for i in range(len(data)):
        response = reader.feed(data[i : i + 1])
        if i < len(data) - 1:
            assert response is None, f"complete after {i + 1} of {len(data)} bytes"
    return response


# -- the reader, pure -------------------------------------------------------------------
def test_content_length_response_in_pieces():
    raw = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{"a": 1}'
    response = feed_bytewise(ResponseReader(), raw)
    assert (response.status, response.body, response.keep_alive) == (200, b'{"a": 1}', True)
    assert response.headers["content-type"] == "application/json"
    whole = ResponseReader().feed(raw)
    assert whole == response


def test_chunked_response_with_extensions_and_trailers():
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3;ext=1\r\n{"a\r\n'
        b'5\r\n": 1}\r\n'
        b"0\r\nX-Trailer: yes\r\n\r\n"
    )
    response = feed_bytewise(ResponseReader(), raw)
    assert response.body == b'{"a": 1}' and response.keep_alive
    plain = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    assert feed_bytewise(ResponseReader(), plain).body == b"ok"


def test_body_up_to_the_end_of_the_connection():
    reader = ResponseReader()
    assert reader.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}") is None
    assert reader.feed(b" ") is None
    response = reader.feed_eof()
    assert response is not None and response.body == b"{} " and not response.keep_alive


def test_interim_answers_no_body_and_connection_close():
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    response = ResponseReader().feed(raw)
    assert response.status == 204 and response.body == b""
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    assert not ResponseReader().feed(closing).keep_alive
    bare = ResponseReader().feed(b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n{}")
    assert bare.status == 200 and bare.body == b"{}"  # the reason phrase is optional
    old = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    assert not ResponseReader().feed(old).keep_alive


def test_a_truncated_answer_is_not_a_response():
    for partial in (
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"",
    ):
        reader = ResponseReader()
        assert reader.feed(partial) is None
        assert reader.feed_eof() is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "status line"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "illegal header line"),
        (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "continuation line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n", "Content-Encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "illegal chunk header"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", "chunk footer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}}", "after the end"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000, "head larger than"),
    ],
)
def test_malformed_answers(raw, message):
    with pytest.raises(BadHttp, match=message):
        ResponseReader().feed(raw)


def test_nothing_after_the_end():
    reader = ResponseReader()
    assert reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") is not None
    with pytest.raises(BadHttp, match="after the end"):
        reader.feed(b"x")


# -- real agents ------------------------------------------------------------------------
def agent_connections(node) -> list:
    return list(node.server.runner.server.connections)


async def test_kept_alive_connection_is_reused_for_gets_and_posts(start_node, test_pki):
    node = await start_node(cert_file=test_pki.node_cert, key_file=test_pki.node_key)
    pool = Pool()
    client = AgentClient(node.address, Options(Trust(cafile=test_pki.ca_pem), TOKEN), pool=pool)
    try:
        await client.status()
        (connection,) = pool.idle.values()
        for _ in range(3):
            assert (await client.get_hardware_info()).raw["hostname"] == "node-1"
            await client.list_commands()
        assert pool.idle[connection.key] is connection and pool.connections_made == 1
        assert len(agent_connections(node)) == 1
    finally:
        await pool.close()
    assert connection.closed and not pool.connections


async def test_agent_closing_the_connection_means_a_new_one(start_node, test_pki):
    node = await start_node(cert_file=test_pki.node_cert, key_file=test_pki.node_key)
    pool = Pool()
    client = AgentClient(node.address, Options(Trust(cafile=test_pki.ca_pem), TOKEN), pool=pool)
    try:
        await client.status()
        for round_ in range(2):  # idle connection closed by the agent; then a POST follows
            for handler in agent_connections(node):
                handler.force_close()  # closes an idle connection's transport
            for _ in range(50):
                if not pool.idle:
                    break
                await asyncio.sleep(0.01)
            assert not pool.idle  # we saw it go
            if round_ == 0:
                await client.status()
            else:
                await client.sync()  # a POST is never retried: it must go on a new connection
        assert pool.connections_made == 3
    finally:
        await pool.close()


async def test_idle_too_long_is_not_reused(start_node, test_pki):
    node = await start_node(cert_file=test_pki.node_cert, key_file=test_pki.node_key)
    pool = Pool(keepalive=0.05)
    client = AgentClient(node.address, Options(Trust(cafile=test_pki.ca_pem), TOKEN), pool=pool)
    try:
        await client.status()
        (first,) = pool.idle.values()
        await asyncio.sleep(0.1)
        await client.status()
        assert first.closed and pool.connections_made == 2
    finally:
        await pool.close()


# -- a scripted TLS server ------------------------------------------------------------------
class Scripted:
    """A TLS server on loopback that answers each request with ``answer(request)`` bytes;
    None closes the connection without an answer."""

    def __init__(self, answer: Callable[[bytes], bytes | None]) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.answer(request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def scripted(test_pki):
    servers = []

    async def start(answer: Callable[[bytes], bytes | None]) -> tuple[Scripted, AgentClient]:
        pem = test_pki.node_cert.read_text()
        identity = Identity(test_pki.node_cert, test_pki.node_key, pem, fingerprint(pem), False)
        script = Scripted(answer)
        server = await asyncio.start_server(
            script.handle, "127.0.0.1", 0, ssl=server_context(identity)
        )
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        options = Options(Trust(cafile=test_pki.ca_pem), TOKEN, retries=2, backoff=0.01)
        return script, AgentClient(f"127.0.0.1:{port}", options)

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def json_answer(data, framing: str = "length") -> bytes:
    body = json.dumps(data).encode()
    if framing == "length":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    if framing == "chunked":
        pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_framings(scripted, framing):
    def answer(request: bytes) -> bytes:
        return json_answer(RESULT if request.startswith(b"POST") else STATUS, framing)

    script, client = await scripted(answer)
    async with client:
        for _ in range(2):
            assert (await client.status()).version == "t"
            assert (await client.run("standby.sync", check=False)).command_name == "sync"
    # a kept connection for length and chunked answers, a new one after each unframed one
    assert script.connections == (4 if framing == "close" else 1)
    first = script.requests[0]
    assert first.startswith(b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Authorization" not in first  # the status is public: no token sent
    post = script.requests[1]
    assert post.startswith(b"POST /v1/commands/ HTTP/1.1\r\n")
    assert f"Authorization: Bearer {TOKEN}\r\n".encode() in post
    assert b"Accept-Encoding" not in post
    assert json.loads(post.partition(b"\r\n\r\n")[2]) == {"name": "standby.sync", "params": {}}


async def test_dropped_before_the_answer(scripted):
    script, client = await scripted(lambda request: None)
    async with client:
        with pytest.raises(Unreachable):
            await client.status()
        assert len(script.requests) == 3  # a GET is retried (retries=2)
        script.requests.clear()
        with pytest.raises(Unreachable):
            await client.sync()
        assert len(script.requests) == 1  # a POST is not: the command may have run


async def test_unreadable_http_is_a_protocol_error(scripted):
    _script, client = await scripted(lambda request: b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n")
    async with client:
        with pytest.raises(ProtocolError, match="bad HTTP answer: illegal header line"):
            await client.status()
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}"
    _script, client = await scripted(lambda request: answer)
    async with client:
        with pytest.raises(ProtocolError, match="Content-Encoding"):
            await client.status()


async def test_result_ids_are_quoted_in_the_path(scripted):
    script, client = await scripted(lambda request: json_answer(RESULT))
    async with client:
        await client.get_command("../x y?z")
    assert script.requests[0].startswith(b"GET /v1/commands/..%2Fx%20y%3Fz HTTP/1.1\r\n")


def test_a_token_that_would_break_the_header_is_refused(test_pki):
    with pytest.raises(ValueError, match="printable ASCII"):
        AgentClient("127.0.0.1", Options(Trust(cafile=test_pki.ca_pem), "tok\r\nX: y"))


async def test_ca_mode_still_checks_the_address(start_node, test_pki):
    """A CA-issued certificate for 127.0.0.1 served on 127.0.0.2: refused, nothing sent."""
    node = await start_node(
        listen_host="127.0.0.2", cert_file=test_pki.node_cert, key_file=test_pki.node_key
    )
    address = f"127.0.0.2:{node.server.port}"
    async with AgentClient(address, Options(Trust(cafile=test_pki.ca_pem), TOKEN)) as client:
        with pytest.raises(Untrusted, match="IP address mismatch"):
            await client.list_commands()
    assert node.agent.guard.summary().get("token", 0) == 0


class CountingServerContext(ssl.SSLContext):
    """A server context that counts the TLS connections made with it."""

    wrapped = 0

    def wrap_bio(self, *args, **kwargs):
        type(self).wrapped += 1
        return super().wrap_bio(*args, **kwargs)


async def test_a_close_right_after_the_handshake_is_a_refused_certificate(test_pki):
    """An agent whose TLS stack sends no alert (asyncio's SSL server, here) ends a TLS 1.3
    connection without a session ticket when it refuses the client certificate: reported
    as such on the first attempt, without retries that would feed its hold-off."""
    context = CountingServerContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(test_pki.node_cert, test_pki.node_key)
    context.load_verify_locations(cafile=test_pki.ca_pem)
    context.verify_mode = ssl.CERT_REQUIRED
    answered = []

    async def handle(reader, writer):
        answered.append(True)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    options = Options(Trust(cafile=test_pki.ca_pem), TOKEN, retries=3, backoff=0.01)
    try:
        async with AgentClient(f"127.0.0.1:{port}", options) as client:
            with pytest.raises(Unauthenticated) as error:
                await client.status()
        assert "closed the connection right after the TLS handshake" in str(error.value)
        assert "requires a client certificate: pass --cert and --key" in str(error.value)
        assert CountingServerContext.wrapped == 1 and not answered
        # with a certificate from another CA: named as a refused certificate
        other = tmp_ca_client(test_pki)
        trust = Trust(cafile=test_pki.ca_pem, certfile=other[0], keyfile=other[1])
        async with AgentClient(f"127.0.0.1:{port}", Options(trust, retries=3)) as client:
            with pytest.raises(Unauthenticated, match="refused our client certificate"):
                await client.status()
        assert CountingServerContext.wrapped == 2
    finally:
        server.close()
        await server.wait_closed()


def tmp_ca_client(test_pki):
    """A client certificate from a CA the server does not know."""
    from conductor import pki

    base = test_pki.ca.parent / "another-ca"
    if not (base / "ca.pem").exists():
        pki.init_ca(base)
        pki.issue_client(base, "conductor")
    client = pki.issue_client(base, "conductor-2")
    return client.cert_path, client.key_path


async def test_connections_reading_at_once_each_get_their_own_bytes(test_pki):
    """All connections of a loop receive through one shared buffer: answers several times
    its size, sent in pieces to 20 connections at once, each arrive intact."""
    from conductor.http import READ_SIZE, ResponseReader
    from conductor.tls import conductor_context

    size = 3 * READ_SIZE + 123
    pem = test_pki.node_cert.read_text()
    identity = Identity(test_pki.node_cert, test_pki.node_key, pem, fingerprint(pem), False)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        n = int(head.split(b" ")[1].strip(b"/"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        body = bytes([n]) * size
        for start in range(0, size, 5000):
            writer.write(body[start : start + 5000])
            await writer.drain()
            await asyncio.sleep(0)
        await reader.read()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context(identity))
    port = server.sockets[0].getsockname()[1]
    context = conductor_context(cafile=test_pki.ca_pem)
    pool = Pool()

    async def fetch(n: int) -> bytes:
        connection = await pool.connect(context, "127.0.0.1", port, 5.0)
        reader = ResponseReader("GET", f"/{n}", [("Host", "127.0.0.1")])
        return (await connection.exchange(reader)).body

    try:
        answers = await asyncio.gather(*(fetch(n) for n in range(1, 21)))
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()
    assert [a == bytes([n]) * size for n, a in enumerate(answers, 1)] == [True] * 20


async def test_the_agents_access_log_names_the_conductor(start_node, test_pki, caplog):
    caplog.set_level(logging.INFO, logger="agent.access")
    node = await start_node(
        cert_file=test_pki.node_cert, key_file=test_pki.node_key, access_log=True
    )
    named = Options(Trust(cafile=test_pki.ca_pem), TOKEN, user_agent="site-b conductor-2")
    pool = Pool()
    try:
        await AgentClient(node.address, Options(Trust(cafile=test_pki.ca_pem), TOKEN)).status()
        await AgentClient(node.address, named, pool=pool).status()
    finally:
        await pool.close()
    agents = [r.user_agent for r in caplog.records if r.name == "agent.access"]
    assert agents == [f"tacet-conductor/{__version__}", "site-b conductor-2"]
