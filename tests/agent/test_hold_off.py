"""A held-off peer's handshakes are delayed; a client that gives up during that delay
(its own timeout) must not extend its lockout. Real clients over loopback."""

from __future__ import annotations

import asyncio
import socket
import ssl

import aiohttp
import pytest

from agent import gate
from wire.tls import client_context

DELAY = 1.0  # the handshake delay for this test (5 s in production)


def impatient_handshake(port: int, cert_pem: str, timeout: float) -> str:
    """A TLS client that gives up after ``timeout`` seconds."""
    context = client_context(cadata=cert_pem)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            return "completed"
    except TimeoutError:
        return "timed out"
    except (ssl.SSLError, OSError) as exc:
        return f"failed: {exc}"


async def held_off(running) -> tuple[float, int]:
    for _ in range(10):
        status, _ = await running.post({"name": "standby.sync"}, token="wrong")
        assert status == 401
    record = running.agent.guard.peers["127.0.0.1"]
    assert record.blocked_until > 0
    return record.blocked_until, len(record.failures)


async def test_clients_timing_out_during_the_delay_do_not_extend_the_lockout(running, monkeypatch):
    monkeypatch.setattr(gate, "MAX_HANDSHAKE_DELAY", DELAY)
    until, failures = await held_off(running)
    guard = running.agent.guard
    before = guard.summary().get("handshake", 0)
    port, cert = running.server.port, running.agent.identity.cert_pem
    outcomes = await asyncio.gather(
        *(asyncio.to_thread(impatient_handshake, port, cert, DELAY / 4) for _ in range(12))
    )
    assert outcomes == ["timed out"] * 12
    # A conductor-like client with a short total timeout, more than ten times over.
    connector = aiohttp.TCPConnector(ssl=client_context(cadata=cert), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(12):
            with pytest.raises(asyncio.TimeoutError):
                async with session.get(
                    f"{running.base}/v1/status", timeout=aiohttp.ClientTimeout(total=DELAY / 4)
                ):
                    pass
    await asyncio.sleep(DELAY + 1.0)  # the delays end; the agent finds the clients gone
    assert guard.summary().get("handshake", 0) == before + 24  # seen, logged, counted...
    record = guard.peers["127.0.0.1"]
    assert record.blocked_until == until  # ...but the lockout ends when it did
    assert len(record.failures) == failures
    # A patient client still gets its answer after the delay.
    status, _ = await running.get("/v1/status", token=None)
    assert status == 200
    assert guard.peers["127.0.0.1"].blocked_until == until


class RecordingTransport(asyncio.Transport):
    """A connection's socket side: what the gate writes, and whether it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.reading = True
        self.closed = False

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data) -> None:
        self.written += bytes(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def client_hello() -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="node")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def test_a_client_hello_arriving_during_the_delay_is_kept(running, monkeypatch):
    """Some Python 3.11 releases (3.11.2 among them) read a connection paused in
    ``connection_made``: the gate must keep what arrives before its handshake starts, or
    the client waits for an answer to a ClientHello that was dropped."""
    monkeypatch.setattr(gate, "MAX_HANDSHAKE_DELAY", DELAY / 4)
    await held_off(running)
    tls_gate = gate.TlsGate(running.agent.ssl_context, lambda: None, running.agent.guard)
    transport = RecordingTransport()
    tls_gate.connection_made(transport)
    tls_gate.data_received(client_hello())  # read although the handshake is delayed
    assert transport.written == b"" and not transport.reading  # held, and reading paused
    await asyncio.sleep(DELAY / 4 + 0.2)
    assert transport.reading
    assert transport.written.startswith(b"\x16\x03")  # the ServerHello's handshake record
    tls_gate.connection_lost(None)


async def test_a_client_leaving_during_the_delay_is_refused_after_it_not_held_off(
    running, monkeypatch
):
    monkeypatch.setattr(gate, "MAX_HANDSHAKE_DELAY", DELAY / 4)
    until, _ = await held_off(running)
    tls_gate = gate.TlsGate(running.agent.ssl_context, lambda: None, running.agent.guard)
    transport = RecordingTransport()
    tls_gate.connection_made(transport)
    assert tls_gate.eof_received() is True  # kept open until the delay ends
    await asyncio.sleep(DELAY / 4 + 0.2)
    assert running.agent.guard.summary()["handshake"] == 1
    assert running.agent.guard.peers["127.0.0.1"].blocked_until == until
    tls_gate.connection_lost(None)
