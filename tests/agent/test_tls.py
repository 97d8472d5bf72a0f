"""Unit tests for ``agent.tls``: the generated certificate, the identity, SSL contexts."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.tls import (
    GENERATED_CERT,
    GENERATED_KEY,
    Identity,
    generate_certificate,
    lazy_system_trust,
    load_identity,
    server_context,
)
from wire.certs import fingerprint
from wire.files import write_private
from wire.tls import client_context

UTC = datetime.UTC
SLACK = datetime.timedelta(seconds=10)
LOOPBACK = ipaddress.ip_address("127.0.0.1")
ADDRESSES = [
    ipaddress.ip_address("127.0.0.1"),
    ipaddress.ip_address("::1"),
    ipaddress.ip_address("192.0.2.10"),
]
FINGERPRINT = re.compile(r"^(?:[0-9A-F]{2}:){31}[0-9A-F]{2}$")


def san_addresses(cert: x509.Certificate) -> set[object]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.IPAddress))


def read_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def store_certificate(state_dir: Path, addresses, now: datetime.datetime) -> str:
    """Put a generated certificate and key where ``load_identity`` looks; return its PEM."""
    cert_pem, key_pem = generate_certificate("old", addresses, now=now)
    write_private(state_dir / GENERATED_KEY, key_pem)
    write_private(state_dir / GENERATED_CERT, cert_pem)
    return cert_pem.decode()


# -- generate_certificate ----------------------------------------------------------------


def test_certificate_shape() -> None:
    now = datetime.datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
    cert_pem, key_pem = generate_certificate("node-1.example", ADDRESSES, now=now)
    cert = x509.load_pem_x509_certificate(cert_pem)

    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP384R1)
    assert public_key.key_size == 384

    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [attribute.value for attribute in cn] == ["node-1.example"]
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)  # self-signed

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical is True
    assert san_addresses(cert) == set(ADDRESSES)
    assert len(san.value) == len(ADDRESSES)  # IP addresses only, nothing else
    assert san.value.get_values_for_type(x509.DNSName) == []

    assert isinstance(cert.signature_hash_algorithm, hashes.SHA512)
    assert cert.not_valid_before_utc == now - datetime.timedelta(hours=1)
    assert cert.not_valid_after_utc == now + datetime.timedelta(days=30)

    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == public_key
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted


def test_certificate_validity_defaults_to_now() -> None:
    before = datetime.datetime.now(UTC)
    cert_pem, _ = generate_certificate("host", [LOOPBACK])
    after = datetime.datetime.now(UTC)
    cert = x509.load_pem_x509_certificate(cert_pem)
    hour, month = datetime.timedelta(hours=1), datetime.timedelta(days=30)
    assert before - hour - SLACK <= cert.not_valid_before_utc <= after - hour + SLACK
    assert before + month - SLACK <= cert.not_valid_after_utc <= after + month + SLACK


def test_single_address_and_duplicates() -> None:
    address = ipaddress.ip_address("192.0.2.7")
    cert_pem, _ = generate_certificate("h", [address, address])
    san = x509.load_pem_x509_certificate(cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert list(san.value) == [x509.IPAddress(address)]


def test_each_certificate_has_its_own_key_and_serial() -> None:
    first = x509.load_pem_x509_certificate(generate_certificate("h", [LOOPBACK])[0])
    second = x509.load_pem_x509_certificate(generate_certificate("h", [LOOPBACK])[0])
    assert first.serial_number != second.serial_number
    assert first.public_key() != second.public_key()


@pytest.mark.parametrize(("hostname", "cn"), [("", "tacet"), ("x" * 100, "x" * 64)])
def test_common_name_edge_cases(hostname: str, cn: str) -> None:
    cert = x509.load_pem_x509_certificate(generate_certificate(hostname, [LOOPBACK])[0])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn


# -- fingerprint -------------------------------------------------------------------------


def test_fingerprint_is_sha256_of_der() -> None:
    cert_pem = generate_certificate("h", [LOOPBACK])[0].decode()
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem)).hexdigest().upper()
    expected = ":".join(digest[i : i + 2] for i in range(0, 64, 2))
    assert fingerprint(cert_pem) == expected
    assert FINGERPRINT.match(fingerprint(cert_pem))


def test_fingerprint_matches_cryptography() -> None:
    cert_pem = generate_certificate("h", [LOOPBACK])[0]
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert (
        fingerprint(cert_pem.decode()).replace(":", "")
        == cert.fingerprint(hashes.SHA256()).hex().upper()
    )


# -- write_private -----------------------------------------------------------------------


def test_write_private_mode_and_content(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("old")
    path.chmod(0o644)
    old_umask = os.umask(0)
    try:
        write_private(path, b"new secret")
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"new secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]  # no temporary left


# -- load_identity -----------------------------------------------------------------------


def test_load_identity_generates_in_state_dir(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the mode must not depend on the umask
    try:
        identity = load_identity(tmp_path, ADDRESSES, hostname="node-1")
    finally:
        os.umask(old_umask)
    assert isinstance(identity, Identity)
    assert identity.generated is True
    assert identity.cert_path == tmp_path / GENERATED_CERT
    assert identity.key_path == tmp_path / GENERATED_KEY
    assert stat.S_IMODE(identity.key_path.stat().st_mode) == 0o600
    assert identity.cert_pem == identity.cert_path.read_text()
    assert identity.fingerprint == fingerprint(identity.cert_pem)
    cert = read_cert(identity.cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-1"
    assert san_addresses(cert) == set(ADDRESSES)
    key = serialization.load_pem_private_key(identity.key_path.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()


def test_load_identity_defaults_to_the_host_name(tmp_path: Path) -> None:
    identity = load_identity(tmp_path, [LOOPBACK])
    cn = read_cert(identity.cert_path).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn[0].value == socket.gethostname()[:64]


def test_load_identity_reuses_the_certificate(tmp_path: Path) -> None:
    first = load_identity(tmp_path, ADDRESSES, hostname="node-1")
    key_bytes = first.key_path.read_bytes()
    second = load_identity(tmp_path, ADDRESSES, hostname="node-1")
    assert second.fingerprint == first.fingerprint
    assert second.cert_pem == first.cert_pem
    assert second.key_path.read_bytes() == key_bytes
    # A subset of the covered addresses (and another host name) still reuses it.
    third = load_identity(tmp_path, ADDRESSES[:1], hostname="other")
    assert third.fingerprint == first.fingerprint


def test_load_identity_regenerates_for_a_new_address(tmp_path: Path) -> None:
    first = load_identity(tmp_path, [LOOPBACK], hostname="node-1")
    new = ipaddress.ip_address("198.51.100.4")
    second = load_identity(tmp_path, [LOOPBACK, new], hostname="node-1")
    assert second.fingerprint != first.fingerprint
    assert san_addresses(read_cert(second.cert_path)) == {LOOPBACK, new}
    assert second.cert_pem == second.cert_path.read_text()
    assert stat.S_IMODE(second.key_path.stat().st_mode) == 0o600


@pytest.mark.parametrize("age_days", [29.5, 31, 365])
def test_load_identity_regenerates_near_or_past_expiry(tmp_path: Path, age_days: float) -> None:
    now = datetime.datetime.now(UTC)
    old_pem = store_certificate(tmp_path, ADDRESSES, now - datetime.timedelta(days=age_days))
    identity = load_identity(tmp_path, ADDRESSES, hostname="node-1")
    assert identity.fingerprint != fingerprint(old_pem)
    cert = read_cert(identity.cert_path)
    assert cert.not_valid_after_utc > now + datetime.timedelta(days=29)


def test_load_identity_keeps_a_certificate_with_days_left(tmp_path: Path) -> None:
    now = datetime.datetime.now(UTC)
    old_pem = store_certificate(tmp_path, ADDRESSES, now - datetime.timedelta(days=27))
    identity = load_identity(tmp_path, ADDRESSES, hostname="node-1")
    assert identity.fingerprint == fingerprint(old_pem)


def test_load_identity_regenerates_a_corrupt_certificate(tmp_path: Path) -> None:
    first = load_identity(tmp_path, ADDRESSES, hostname="node-1")
    first.cert_path.write_text("not a certificate")
    second = load_identity(tmp_path, ADDRESSES, hostname="node-1")
    assert second.fingerprint != first.fingerprint
    assert "BEGIN CERTIFICATE" in second.cert_pem


def test_load_identity_regenerates_without_a_key(tmp_path: Path) -> None:
    first = load_identity(tmp_path, ADDRESSES, hostname="node-1")
    first.key_path.unlink()
    second = load_identity(tmp_path, ADDRESSES, hostname="node-1")
    assert second.fingerprint != first.fingerprint
    server_context(second)  # the key and certificate belong together


def test_load_identity_regenerates_when_key_does_not_match(tmp_path: Path) -> None:
    # A crash between writing the new key and the new certificate leaves a pair that
    # OpenSSL refuses to load; the next start must not reuse it.
    first = load_identity(tmp_path, ADDRESSES, hostname="node-1")
    write_private(first.key_path, generate_certificate("x", ADDRESSES)[1])
    second = load_identity(tmp_path, ADDRESSES, hostname="node-1")
    assert second.fingerprint != first.fingerprint
    server_context(second)


def test_load_identity_uses_configured_files(tmp_path: Path) -> None:
    cert_pem, key_pem = generate_certificate("configured", [ipaddress.ip_address("192.0.2.1")])
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key_pem)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    identity = load_identity(state_dir, ADDRESSES, cert_file, key_file)
    assert identity.generated is False
    assert identity.cert_path == cert_file
    assert identity.key_path == key_file
    assert identity.cert_pem == cert_pem.decode()
    assert identity.fingerprint == fingerprint(cert_pem.decode())
    assert list(state_dir.iterdir()) == []  # nothing generated
    server_context(identity)


# -- SSL contexts ------------------------------------------------------------------------


@pytest.fixture
def identity(tmp_path: Path) -> Identity:
    return load_identity(tmp_path, [LOOPBACK, ipaddress.ip_address("::1")], hostname="agent")


def test_server_context_minimum_versions(identity: Identity) -> None:
    assert server_context(identity).minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_context(identity, "1.2").minimum_version == ssl.TLSVersion.TLSv1_2
    context = server_context(identity, "1.3")
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.verify_mode == ssl.CERT_NONE  # no client CA given: none asked for


def test_client_context_verifies_by_default() -> None:
    context = client_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    context = client_context(insecure=False, min_version="1.3")
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3


def test_client_context_insecure() -> None:
    context = client_context(insecure=True)
    assert context.verify_mode == ssl.CERT_NONE
    assert context.check_hostname is False


def test_client_context_with_cadata_trusts_only_that(identity: Identity) -> None:
    context = client_context(cadata=identity.cert_pem)
    assert context.verify_mode == ssl.CERT_REQUIRED
    # Only the pinned certificate, not the system store (it is not a CA, so
    # get_ca_certs() would not list it).
    assert context.cert_store_stats()["x509"] == 1


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str = "127.0.0.1"
) -> tuple[str | None, bytes | None, bytes]:
    """One TLS connection on loopback: (version, server certificate DER, data read)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    server_errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            server_errors.append(exc)
            return
        conn.settimeout(10)
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except OSError as exc:
            server_errors.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname()[:2], timeout=10) as raw,
            client.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            data = tls.recv(2)
            return tls.version(), tls.getpeercert(binary_form=True), data
    finally:
        thread.join(10)
        listener.close()
        assert not thread.is_alive()


def test_handshake_with_pinned_certificate(identity: Identity) -> None:
    version, der, data = handshake(
        server_context(identity), client_context(cadata=identity.cert_pem)
    )
    assert data == b"ok"
    assert version == "TLSv1.3"
    assert der == ssl.PEM_cert_to_DER_cert(identity.cert_pem)


def test_handshake_with_cafile(identity: Identity) -> None:
    version, _, data = handshake(
        server_context(identity, "1.3"), client_context(cafile=identity.cert_path)
    )
    assert data == b"ok"
    assert version == "TLSv1.3"


def test_handshake_tls12_client_against_default_server(identity: Identity) -> None:
    client = client_context(cadata=identity.cert_pem)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    version, _, data = handshake(server_context(identity), client)
    assert (version, data) == ("TLSv1.2", b"ok")


def test_handshake_tls12_client_refused_by_tls13_server(identity: Identity) -> None:
    client = client_context(cadata=identity.cert_pem)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(server_context(identity, "1.3"), client)


def test_handshake_without_the_ca_fails(identity: Identity) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server_context(identity), client_context())


def test_handshake_with_another_ca_fails(identity: Identity, tmp_path: Path) -> None:
    other = generate_certificate("agent", [LOOPBACK])[0].decode()
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server_context(identity), client_context(cadata=other))


def test_handshake_checks_the_address(identity: Identity) -> None:
    # The certificate carries IP SANs only: another address or a name does not match.
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(
            server_context(identity),
            client_context(cadata=identity.cert_pem),
            server_hostname="192.0.2.99",
        )


def test_handshake_insecure_client_without_ca(identity: Identity) -> None:
    _, _, data = handshake(server_context(identity), client_context(insecure=True))
    assert data == b"ok"


def test_restart_reuses_identity_from_facts_without_parsing(tmp_path, monkeypatch):
    import ipaddress

    from agent import tls

    addresses = [ipaddress.ip_address("127.0.0.1")]
    first = tls.load_identity(tmp_path, addresses, hostname="node-1")
    assert (tmp_path / tls.GENERATED_FACTS).exists()

    def no_parsing(*args, **kwargs):
        raise AssertionError("X.509 parsing on the fast path")

    monkeypatch.setattr(tls, "_reusable", no_parsing)
    second = tls.load_identity(tmp_path, addresses, hostname="node-1")
    assert second.fingerprint == first.fingerprint
    # a key that no longer matches is caught by the fast path too
    _other_cert, other_key = tls.generate_certificate("x", addresses)
    (tmp_path / tls.GENERATED_KEY).write_bytes(other_key)
    third = tls.load_identity(tmp_path, addresses, hostname="node-1")
    assert third.fingerprint != first.fingerprint


def test_spki_walk_matches_cryptography_for_several_certificates(tmp_path):
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from agent.tls import generate_certificate
    from conductor import pki
    from wire.certs import spki_der

    pems = [
        generate_certificate("a", [ipaddress.ip_address("127.0.0.1")])[0].decode(),
        generate_certificate("b" * 60, [])[0].decode(),
    ]
    ca = pki.init_ca(tmp_path / "ca")
    pems.append(ca.cert_pem.decode())
    pems.append(pki.issue_client(tmp_path / "ca", "conductor").cert_pem.decode())
    for pem in pems:
        expected = (
            x509.load_pem_x509_certificate(pem.encode())
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        assert spki_der(ssl.PEM_cert_to_DER_cert(pem)) == expected
    with pytest.raises(ValueError):
        spki_der(b"\x30\x82\xff\xff")
    with pytest.raises((ValueError, IndexError)):
        spki_der(b"\x04\x00")


# -- lazy system trust ----------------------------------------------------------------


def self_signed_ca(common_name: str) -> tuple[bytes, bytes]:
    """A CA certificate that also serves 127.0.0.1 (PEM certificate, PEM key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SLACK)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(LOOPBACK)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture
def hashed_ca_dir(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A hashed CA directory holding one CA, and a server context presenting that CA."""
    cert_pem, key_pem = self_signed_ca("Lazy Trust Test CA")
    directory = tmp_path / "certs"
    directory.mkdir()
    (directory / "test-ca.pem").write_bytes(cert_pem)
    subprocess.run(["openssl", "rehash", str(directory)], check=True)
    (tmp_path / "server.pem").write_bytes(cert_pem)
    (tmp_path / "server.key").write_bytes(key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    return directory, server


def test_lazy_system_trust_still_verifies_through_the_directory(
    hashed_ca_dir: tuple[Path, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, server = hashed_ca_dir
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", str(directory))
    with lazy_system_trust() as applied:
        context = ssl.create_default_context()  # what aiohttp does at import
    assert applied is True
    assert "SSL_CERT_FILE" not in os.environ  # restored for contexts built later
    assert context.cert_store_stats()["x509"] == 0  # nothing parsed up front
    version, _, data = handshake(server, context)
    assert data == b"ok" and version is not None
    # The store is still a real one: another CA's certificate is refused.
    other_pem, other_key = self_signed_ca("Lazy Trust Test CA")
    other = Path(directory.parent / "other.pem")
    other.write_bytes(other_pem)
    (directory.parent / "other.key").write_bytes(other_key)
    impostor = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    impostor.load_cert_chain(other, directory.parent / "other.key")
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        handshake(impostor, context)


def test_lazy_system_trust_leaves_an_operator_bundle_alone(tmp_path: Path) -> None:
    environ = {"SSL_CERT_FILE": str(tmp_path / "bundle.pem")}
    with lazy_system_trust(environ) as applied:
        assert environ == {"SSL_CERT_FILE": str(tmp_path / "bundle.pem")}
    assert applied is False
    assert environ == {"SSL_CERT_FILE": str(tmp_path / "bundle.pem")}


def test_lazy_system_trust_applies_when_the_variable_names_the_system_bundle(
    hashed_ca_dir: tuple[Path, ssl.SSLContext],
) -> None:
    directory, _ = hashed_ca_dir
    system_bundle = ssl.get_default_verify_paths().openssl_cafile
    environ = {"SSL_CERT_FILE": system_bundle, "SSL_CERT_DIR": str(directory)}
    with lazy_system_trust(environ) as applied:
        assert environ["SSL_CERT_FILE"] == os.devnull
    assert applied is True
    assert environ == {"SSL_CERT_FILE": system_bundle, "SSL_CERT_DIR": str(directory)}


def test_lazy_system_trust_needs_a_hashed_directory(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not hashed")
    environ = {"SSL_CERT_DIR": str(tmp_path)}
    with lazy_system_trust(environ) as applied:
        assert "SSL_CERT_FILE" not in environ
    assert applied is False
    environ = {"SSL_CERT_DIR": str(tmp_path / "missing")}
    with lazy_system_trust(environ) as applied:
        pass
    assert applied is False


# -- local_addresses -----------------------------------------------------------------------
def test_local_addresses_take_ipv6_and_leave_link_local_out(monkeypatch) -> None:
    """IPv6 addresses go into the generated certificate's IP SANs; a link-local one
    (netifaces shows it with its zone) does not: it names no one machine."""
    import netifaces

    from agent.tls import local_addresses

    table = {
        "lo": {netifaces.AF_INET: [{"addr": "127.0.0.1"}], netifaces.AF_INET6: [{"addr": "::1"}]},
        "eth0": {
            netifaces.AF_INET6: [
                {"addr": "2001:db8::10"},
                {"addr": "fd00::10"},
                {"addr": "fe80::10%eth0"},
                {"addr": "not-an-address"},
            ],
        },
    }
    monkeypatch.setattr(netifaces, "interfaces", lambda: list(table))
    monkeypatch.setattr(netifaces, "ifaddresses", lambda name: table[name])
    assert local_addresses() == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "2001:db8::10", "fd00::10")
    }


def test_listen_socket_takes_an_ipv6_address_with_or_without_brackets() -> None:
    from agent.daemon import listen_socket

    for host in ("::1", "[::1]", f"::1%{socket.if_nametoindex('lo')}"):
        sock = listen_socket(host, 0)
        try:
            assert sock.family == socket.AF_INET6 and sock.getsockname()[0] == "::1"
        finally:
            sock.close()
