"""Deadlines: a silent agent ends as Unreachable within the call's deadline (library) or
the command's ``--timeout`` (``tacet``), retries and backoff inside it."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest

from agent.tls import Identity, server_context
from conductor.cli import main
from conductor.client import AgentClient, Options, Trust, Unreachable
from wire.certs import fingerprint

SLACK = 1.5  # s: starting the event loop, closing connections


@contextlib.contextmanager
def silent_tcp() -> Iterator[int]:
    """Accepts TCP (the kernel completes the connection) and never says a byte."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@contextlib.contextmanager
def silent_after_tls(context: ssl.SSLContext) -> Iterator[int]:
    """Completes the TLS handshake, then never answers the request."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.settimeout(5)
            try:
                held.append(context.wrap_socket(conn, server_side=True))
            except OSError:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        listener.close()
        for conn in held:
            conn.close()


@pytest.fixture
def agent_context(test_pki) -> ssl.SSLContext:
    pem = test_pki.node_cert.read_text()
    identity = Identity(test_pki.node_cert, test_pki.node_key, pem, fingerprint(pem), False)
    return server_context(identity)


def tacet_status(port: int, ca: str, *extra: str) -> tuple[int, float]:
    started = time.monotonic()
    code = main(["status", f"127.0.0.1:{port}", "--cafile", ca, *extra])
    return code, time.monotonic() - started


@pytest.mark.parametrize("silence", ["tcp", "after-tls"])
def test_tacet_status_ends_at_its_timeout(silence, test_pki, agent_context, capsys):
    server = silent_tcp() if silence == "tcp" else silent_after_tls(agent_context)
    with server as port:
        code, elapsed = tacet_status(port, str(test_pki.ca_pem), "--timeout", "3")
    err = capsys.readouterr().err
    assert code == 3, err
    assert 3 <= elapsed < 3 + SLACK, elapsed
    assert "unreachable" in err and "no answer within 3 s (--timeout" in err, err
    assert "\n" not in err.rstrip("\n")  # one line


def test_retries_and_backoff_are_inside_the_timeout(test_pki, capsys):
    """Many quick failures (a closed port) with a long backoff: the timeout still holds."""
    with silent_tcp() as port:
        pass  # closed again: connections are refused at once
    code, elapsed = tacet_status(port, str(test_pki.ca_pem), "--timeout", "2", "--retries", "50")
    err = capsys.readouterr().err
    assert code == 3, err
    assert elapsed < 2 + SLACK, elapsed
    assert "attempts; last:" in err and "Connect call failed" in err, err


@pytest.mark.parametrize("silence", ["tcp", "after-tls"])
async def test_a_library_call_ends_at_its_deadline(silence, test_pki, agent_context):
    server = silent_tcp() if silence == "tcp" else silent_after_tls(agent_context)
    with server as port:
        options = Options(Trust(cafile=test_pki.ca_pem), deadline=2.0)
        async with AgentClient(f"127.0.0.1:{port}", options) as client:
            started = time.monotonic()
            with pytest.raises(Unreachable) as error:
                await client.status()
            elapsed = time.monotonic() - started
    assert 2 <= elapsed < 2 + SLACK, elapsed
    assert "no answer within 2 s (deadline; 1 attempt; none answered)" in str(error.value)


async def test_without_a_deadline_the_attempt_timeout_applies(test_pki, agent_context):
    with silent_after_tls(agent_context) as port:
        options = Options(
            Trust(cafile=test_pki.ca_pem), timeout=1.0, retries=1, backoff=0.01, deadline=None
        )
        async with AgentClient(f"127.0.0.1:{port}", options) as client:
            started = time.monotonic()
            with pytest.raises(Unreachable):
                await client.status()
            elapsed = time.monotonic() - started
    assert 2 <= elapsed < 2 + SLACK, elapsed  # two attempts of 1 s


def test_timeout_must_be_positive(test_pki, capsys):
    assert main(["status", "127.0.0.1:1", "--cafile", str(test_pki.ca_pem), "--timeout", "0"]) == 2
    assert "--timeout must be a positive number" in capsys.readouterr().err
