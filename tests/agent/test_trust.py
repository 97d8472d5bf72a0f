"""Trust features that need no PKI: handshake refusals, throttling, the token binding."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import socket
import ssl

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.tls import generate_certificate
from tests.agent.conftest import TOKEN, start
from wire.tls import client_context


def independent_binding(token: str, cert_der: bytes) -> tuple[str, str]:
    """docs/security.md's construction, written again from the document."""
    certificate = x509.load_der_x509_certificate(cert_der)
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spki_hex = hashlib.sha256(spki).hexdigest()
    mac = hmac.new(token.encode(), b"tacet-binding-v1:" + spki_hex.encode(), hashlib.sha256)
    return spki_hex, mac.hexdigest()


def seen_certificate(port: int, cadata: str) -> bytes:
    context = ssl.create_default_context(cadata=cadata)
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.getpeercert(binary_form=True)


async def test_binding_matches_the_certificate_the_client_sees(running):
    _, status = await running.get("/v1/status", token=None)
    binding = status["binding"]
    assert binding["version"] == 1
    der = await asyncio.to_thread(
        seen_certificate, running.server.port, running.agent.identity.cert_pem
    )
    spki_hex, mac = independent_binding(TOKEN, der)
    assert binding["spki_sha256"] == spki_hex
    assert hmac.compare_digest(binding["hmac_sha256"], mac)
    # a certificate swapped in by someone without the token does not verify
    other_pem, _key = generate_certificate("evil", [])
    other_der = ssl.PEM_cert_to_DER_cert(other_pem.decode())
    other_spki, other_mac = independent_binding(TOKEN, other_der)
    assert other_spki != binding["spki_sha256"]
    assert other_mac != binding["hmac_sha256"]
    assert independent_binding("wrong-token", der)[1] != binding["hmac_sha256"]


async def test_no_binding_without_a_preshared_token(tmp_path):
    run = await start(tmp_path / "state", agent_token=None)
    try:
        _, status = await run.get("/v1/status", token=None)
        assert "binding" not in status
    finally:
        await run.client.close()
        await run.server.stop()


async def test_refused_handshakes_are_counted(running):
    def plain_http() -> None:
        with socket.create_connection(("127.0.0.1", running.server.port)) as raw:
            raw.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
            raw.settimeout(5)
            with contextlib.suppress(OSError):
                raw.recv(100)

    def untrusting_client() -> None:
        context = ssl.create_default_context()  # does not know the agent's certificate
        try:
            with socket.create_connection(("127.0.0.1", running.server.port)) as raw:
                context.wrap_socket(raw, server_hostname="127.0.0.1")
        except ssl.SSLError:
            pass

    await asyncio.to_thread(plain_http)
    await asyncio.to_thread(untrusting_client)
    for _ in range(50):
        if running.agent.guard.summary().get("handshake", 0) >= 2:
            break
        await asyncio.sleep(0.05)
    assert running.agent.guard.summary()["handshake"] == 2
    _, status = await running.get("/v1/status", token=None)
    assert status["rejections"]["handshake"] == 2


async def test_repeated_failures_hold_off_one_peer_only(running):
    for _ in range(10):
        code, _ = await running.post({"name": "standby.sync"}, token="wrong")
        assert code == 401
    async with running.client.post(
        f"{running.base}/v1/commands/", params={"agent_token": TOKEN}, json={"name": "standby.sync"}
    ) as response:
        assert response.status == 429  # even with the right token, for now
        assert int(response.headers["Retry-After"]) >= 1
        assert (await response.json())["faultstring"]
    # another address (127.0.0.2 is loopback too) is not affected
    connector = aiohttp.TCPConnector(
        ssl=client_context(cadata=running.agent.identity.cert_pem), local_addr=("127.0.0.2", 0)
    )
    async with (
        aiohttp.ClientSession(connector=connector) as other,
        other.post(
            f"{running.base}/v1/commands/",
            params={"agent_token": TOKEN},
            json={"name": "standby.sync"},
        ) as response,
    ):
        assert response.status == 200
    counts = running.agent.guard.summary()
    assert counts["token"] == 10 and counts["throttled"] >= 1
