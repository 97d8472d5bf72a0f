"""Mutual TLS end to end with certificates from the project's own `tacet pki` commands.

The node's secrets travel as the per-node initrd (`tacet pki node-bundle`), unpacked by
the real cpio tool over a fake root, and the agent loads them from there.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import re
import socket
import ssl
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config import load_config
from agent.daemon import AgentServer
from agent.power import RecordingPower
from tests.agent.conftest import FakeInventory

ROOT = Path(__file__).resolve().parent.parent.parent
CLI = "import sys; from conductor.cli import main; sys.exit(main(sys.argv[1:]))"


def tacet(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CLI, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    base = tmp_path_factory.mktemp("pki")
    ca, other = base / "ca", base / "other-ca"
    tacet("pki", "init", str(ca))
    tacet("pki", "issue-client", str(ca), "conductor-1")
    tacet("pki", "issue-client", str(ca), "intruder")
    tacet("pki", "init", str(other))
    tacet("pki", "issue-client", str(other), "conductor-1")
    out = tacet(
        "pki",
        "node-bundle",
        str(ca),
        "--node",
        "node-7",
        "--ip",
        "127.0.0.1",
        "-o",
        str(base / "node-7.cpio"),
    )
    root = base / "root"
    root.mkdir()
    subprocess.run(
        ["cpio", "-idm", "--no-absolute-filenames", "--quiet"],
        cwd=root,
        input=gzip.decompress((base / "node-7.cpio").read_bytes()),  # as the kernel does
        check=True,
        timeout=30,
    )
    expired = base / "expired"
    expired.mkdir()
    write_expired_client(ca, expired)
    return {
        "base": base,
        "ca": ca,
        "other": other,
        "root": root,
        "expired": expired,
        "cli_output": out,
    }


def write_expired_client(ca_dir: Path, out: Path) -> None:
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conductor-1")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA384())
    )
    (out / "client.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "client-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture
async def node(pki, tmp_path):
    etc = pki["root"] / "etc" / "tacet"
    (etc / "20-allowlist.toml").write_text('client-allowlist = ["conductor-*"]\n')
    (tmp_path / "cmdline").write_text("quiet\n")
    config = replace(
        load_config(tmp_path / "cmdline", etc, tmp_path / "state"),
        listen_host="127.0.0.1",
        listen_port=0,
    )
    server = AgentServer(config, RecordingPower(), collect_inventory=FakeInventory())
    await server.start()
    yield server
    await server.stop()


def client_context(pki, cert_dir: Path | None, name: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"] / "ca.pem"))
    if cert_dir is not None:
        context.load_cert_chain(cert_dir / f"{name}.pem", cert_dir / f"{name}-key.pem")
    return context


def request(port: int, context: ssl.SSLContext, path: str = "/v1/commands/") -> bytes:
    """One HTTP/1.1 GET over TLS; returns the status line, or raises on a refused session."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="node-7") as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: node-7\r\nConnection: close\r\n\r\n".encode())
        data = tls.recv(200)
        if not data:
            raise ConnectionResetError("closed without an answer")
        return data.split(b"\r\n", 1)[0]


async def call(port, context, path="/v1/commands/"):
    return await asyncio.to_thread(request, port, context, path)


async def refused(port, context) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        await call(port, context)


async def counted(server, layer: str, expected: int) -> None:
    for _ in range(100):
        if server.agent.guard.summary().get(layer, 0) >= expected:
            break
        await asyncio.sleep(0.02)
    assert server.agent.guard.summary().get(layer, 0) == expected


async def test_agent_serves_the_bundle_certificate(node, pki):
    printed = re.search(r"([0-9A-F]{2}(?::[0-9A-F]{2}){31})", pki["cli_output"]).group(1)
    assert node.agent.identity.fingerprint == printed
    assert node.agent.identity.generated is False
    assert node.agent.has_token  # the bundle's token file was loaded
    token = (pki["root"] / "etc" / "tacet" / "token").read_text().strip()
    assert node.agent.token_matches(token)
    assert token not in pki["cli_output"]  # never printed without --show-token


async def test_conductor_certificate_needs_no_token(node, pki):
    context = client_context(pki, pki["ca"] / "clients", "conductor-1")
    assert await call(node.port, context) == b"HTTP/1.1 200 OK"
    assert node.agent.guard.summary() == {}


async def test_client_without_certificate_is_refused_in_the_handshake(node, pki):
    await refused(node.port, client_context(pki, None, None))
    await counted(node, "handshake", 1)


async def test_certificate_from_another_ca_is_refused(node, pki):
    await refused(node.port, client_context(pki, pki["other"] / "clients", "conductor-1"))
    await counted(node, "handshake", 1)


async def test_expired_certificate_is_refused(node, pki):
    context = ssl.create_default_context(cafile=str(pki["ca"] / "ca.pem"))
    context.load_cert_chain(pki["expired"] / "client.pem", pki["expired"] / "client-key.pem")
    await refused(node.port, context)
    await counted(node, "handshake", 1)


async def test_name_outside_the_allowlist_is_refused(node, pki):
    await refused(node.port, client_context(pki, pki["ca"] / "clients", "intruder"))
    await counted(node, "allowlist", 1)
    # and the right one still works afterwards
    context = client_context(pki, pki["ca"] / "clients", "conductor-1")
    assert await call(node.port, context) == b"HTTP/1.1 200 OK"


async def test_conductor_pinned_to_another_certificate_sends_nothing(node, pki, tmp_path):
    from agent.tls import generate_certificate

    other_pem, _ = generate_certificate("node-7", [])
    context = ssl.create_default_context(cadata=other_pem.decode())
    context.load_cert_chain(
        pki["ca"] / "clients" / "conductor-1.pem", pki["ca"] / "clients" / "conductor-1-key.pem"
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        await call(node.port, context)
    assert node.agent.guard.summary().get("token", 0) == 0


# -- what the conductor reports when the agent refuses its certificate ---------------------
def conductor_client(node, pki, cert_dir: Path | None = None, name: str | None = None):
    from conductor.client import AgentClient, Options, Trust

    certfile = cert_dir / f"{name}.pem" if cert_dir is not None else None
    keyfile = cert_dir / f"{name}-key.pem" if cert_dir is not None else None
    trust = Trust(cafile=pki["ca"] / "ca.pem", certfile=certfile, keyfile=keyfile)
    return AgentClient(f"127.0.0.1:{node.port}", Options(trust, retries=3, backoff=0.5))


async def test_conductor_without_a_client_certificate_is_told_so_at_once(node, pki):
    from conductor.client import Unauthenticated

    started = asyncio.get_running_loop().time()
    async with conductor_client(node, pki) as client:
        with pytest.raises(Unauthenticated) as error:
            await client.status()
    assert asyncio.get_running_loop().time() - started < 1.0  # no retries
    assert error.value.exit_code == 4
    message = str(error.value)
    assert "certificate required" in message  # the agent's TLS 1.3 alert
    assert "requires a client certificate: pass --cert and --key" in message
    await counted(node, "handshake", 1)  # one attempt, one failure towards the hold-off


async def test_conductor_with_a_certificate_from_another_ca_is_told_so_at_once(node, pki):
    from conductor.client import Unauthenticated

    async with conductor_client(node, pki, pki["other"] / "clients", "conductor-1") as client:
        with pytest.raises(Unauthenticated) as error:
            await client.status()
    message = str(error.value)
    assert "unknown ca" in message and "refused our client certificate" in message
    await counted(node, "handshake", 1)


async def test_conductor_outside_the_allowlist_is_told_so_at_once(node, pki):
    """After the handshake, so no alert: the TLS 1.3 connection ends without a session
    ticket, which the conductor reads as not accepted."""
    from conductor.client import Unauthenticated

    async with conductor_client(node, pki, pki["ca"] / "clients", "intruder") as client:
        with pytest.raises(Unauthenticated, match="refused our client certificate"):
            await client.status()
    await counted(node, "allowlist", 1)


async def test_conductor_with_the_right_certificate_works(node, pki):
    async with conductor_client(node, pki, pki["ca"] / "clients", "conductor-1") as client:
        assert (await client.status()).version
        assert await client.list_commands() == []
    assert node.agent.guard.summary() == {}


async def test_tls_1_2_client_without_a_certificate_gets_an_alert(node, pki):
    """TLS 1.2 refuses inside the handshake: the agent's handshake-failure alert arrives."""
    from conductor.client import Unauthenticated
    from conductor.tls import conductor_context

    context = conductor_context(cafile=pki["ca"] / "ca.pem")
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    client = conductor_client(node, pki)
    client.context = context
    async with client:
        with pytest.raises(Unauthenticated, match=r"handshake failure.*pass --cert and --key"):
            await client.status()
    await counted(node, "handshake", 1)


# -- what counts towards the hold-off ----------------------------------------------------
def connect_and_leave(port: int, send: bytes = b"") -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        if send:
            raw.sendall(send)


async def test_connections_dropped_mid_handshake_do_not_count_towards_the_hold_off(node, pki):
    hello = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(*hello, server_hostname="node-7")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    client_hello = hello[1].read()
    for _ in range(15):  # more than the 10 failures that would hold the address off
        await asyncio.to_thread(connect_and_leave, node.port)  # a port scan
        await asyncio.to_thread(connect_and_leave, node.port, client_hello)  # leaves after hello
    await counted(node, "handshake", 30)  # logged and counted...
    assert node.agent.guard.retry_after("127.0.0.1") == 0  # ...but not held against it
    context = client_context(pki, pki["ca"] / "clients", "conductor-1")
    assert await call(node.port, context) == b"HTTP/1.1 200 OK"
    assert node.agent.guard.summary().get("throttled", 0) == 0


async def test_refused_client_certificates_count_towards_the_hold_off(node, pki):
    for _ in range(10):
        await refused(node.port, client_context(pki, None, None))
    await counted(node, "handshake", 10)
    assert node.agent.guard.retry_after("127.0.0.1") > 0
