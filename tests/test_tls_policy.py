"""The TLS policy of wire.tls, as a scanner sees it: a client offering one TLS 1.2 suite at
a time against a real agent on 127.0.0.1, and a permissive server offering one suite at a
time to each of the conductor's contexts. The accepted set must be exactly the documented
one (docs/protocol.md#tls), whatever OpenSSL's build would allow by default."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from agent.config import Config
from agent.daemon import AgentServer
from agent.power import RecordingPower
from conductor.tls import conductor_context, pinning_context, probe_context
from wire.tls import TLS12_CIPHERS, TLS13_CIPHERS, client_context

ECDSA_SUITES = {name for name in TLS12_CIPHERS if name.startswith("ECDHE-ECDSA-")}
RSA_SUITES = {name for name in TLS12_CIPHERS if name.startswith("ECDHE-RSA-")}


def every_tls12_suite() -> list[str]:
    """Every suite this OpenSSL can offer below TLS 1.3, weak ones included."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    names = {c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"}
    return sorted(names)


def test_the_scan_offers_more_than_the_policy() -> None:
    offered = set(every_tls12_suite())
    assert set(TLS12_CIPHERS) <= offered
    assert len(offered - set(TLS12_CIPHERS)) >= 10  # CBC, static RSA, DHE ...


def write_identity(directory: Path, kind: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 with an EC or RSA key."""
    key = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tls-scan-{kind}")])
    now = datetime.datetime.now(datetime.UTC)

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{kind}.pem", directory / f"{kind}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


# -- the agent: a real one on 127.0.0.1 --------------------------------------------------
async def agent_accepts(port: int, suite: str) -> str | None:
    """The suite negotiated when a TLS 1.2 client offers only ``suite``; None if refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.set_ciphers(f"{suite}:@SECLEVEL=0")
    except ssl.SSLError:
        return None  # this OpenSSL cannot offer it at all
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context), 10
        )
    except (ssl.SSLError, ConnectionError):
        return None
    cipher = writer.get_extra_info("cipher")
    writer.close()
    return str(cipher[0])


@pytest.mark.parametrize(("kind", "expected"), [("ec", ECDSA_SUITES), ("rsa", RSA_SUITES)])
async def test_the_agent_accepts_exactly_the_policy(tmp_path, kind, expected) -> None:
    values: dict = dict(
        listen_host="127.0.0.1", listen_port=0, state_dir=tmp_path / "state", config_dir=tmp_path
    )
    if kind == "rsa":  # a configured RSA certificate: no static-RSA suite may creep in
        values["cert_file"], values["key_file"] = write_identity(tmp_path, "rsa")
    server = AgentServer(Config(**values), RecordingPower(), collect_inventory=lambda: {})
    await server.start()
    try:
        accepted = set()
        for suite in every_tls12_suite():
            negotiated = await agent_accepts(server.port, suite)
            if negotiated is not None:
                assert negotiated == suite
                accepted.add(negotiated)
        # TLS 1.3: the suite a default client gets is one of the documented ones.
        tls13 = client_context(insecure=True, min_version="1.3")
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=tls13)
        tls13_suite = writer.get_extra_info("cipher")[0]
        writer.close()
    finally:
        await server.stop("test finished")
    assert accepted == expected
    assert tls13_suite in TLS13_CIPHERS


# -- the conductor: against a server that would take anything ------------------------------
def permissive_server(suite: str, identities: list[tuple[Path, Path]]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(f"{suite}:@SECLEVEL=0")
    for cert, key in identities:
        context.load_cert_chain(cert, key)
    return context


def handshake_suite(server: ssl.SSLContext, client: ssl.SSLContext) -> str | None:
    """The suite of one loopback handshake, None when it fails."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.settimeout(10)
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except OSError:
            pass
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname()[:2], timeout=10) as raw:
            try:
                with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.recv(2)
                    cipher = tls.cipher()
            except OSError:
                return None
        return cipher[0] if cipher else None
    finally:
        thread.join(10)
        listener.close()


@pytest.mark.parametrize("which", ["conductor", "pinning", "probe", "client"])
def test_the_conductor_offers_exactly_the_policy(tmp_path, which) -> None:
    identities = [write_identity(tmp_path, "ec"), write_identity(tmp_path, "rsa")]
    trusted = "".join(cert.read_text() for cert, _ in identities)
    (tmp_path / "trusted.pem").write_text(trusted)
    client = {
        "conductor": lambda: conductor_context(cafile=tmp_path / "trusted.pem"),
        "pinning": lambda: pinning_context(),
        "probe": lambda: probe_context(),
        "client": lambda: client_context(cadata=trusted),
    }[which]()
    accepted = set()
    for suite in every_tls12_suite():
        try:
            server = permissive_server(suite, identities)
        except ssl.SSLError:
            continue
        negotiated = handshake_suite(server, client)
        if negotiated is not None:
            assert negotiated == suite
            accepted.add(negotiated)
    assert accepted == set(TLS12_CIPHERS)
