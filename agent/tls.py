"""Certificates and SSL contexts: the one place Tacet builds TLS configuration.

The agent's own certificate is either configured (cert-file/key-file) or generated
in ironic-python-agent's shape so ironic accepts it: self-signed EC P-384,
CN = hostname, IP-address SANs (critical), SHA-512, valid from one hour ago for
30 days. A generated identity is kept in the state directory and reused after a
restart, so the certificate ironic stored still matches.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import re
import socket
import ssl
import threading
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENERATED_CERT = "agent-cert.pem"
GENERATED_KEY = "agent-key.pem"
# Facts about the generated certificate, so a restart can reuse it without importing
# and running an X.509 parser (start-up time matters: the conductor is polling).
GENERATED_FACTS = "agent-cert.json"
VALIDITY = datetime.timedelta(days=30)
BACKDATE = datetime.timedelta(hours=1)
# Regenerate rather than serve a certificate about to expire.
MIN_REMAINING = datetime.timedelta(days=1)

IPv4Address, IPv6Address = ipaddress.IPv4Address, ipaddress.IPv6Address
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Identity:
    cert_path: Path
    key_path: Path
    cert_pem: str
    fingerprint: str  # SHA-256 of the DER certificate, colon-separated hex
    generated: bool


def fingerprint(cert_pem: str) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert_pem)
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _der_element(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of content, end of element) of the DER element at ``offset``."""
    tag = data[offset]
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, start, end


def spki_der(cert_der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of an X.509 certificate, found by walking its DER.

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ... } ... }.
    A few lines instead of importing an X.509 library on the agent's start path.
    """
    tag, start, _end = _der_element(cert_der, 0)
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, offset, _tbs_end = _der_element(cert_der, start)
    if tag != 0x30:
        raise ValueError("not a certificate")
    if cert_der[offset] == 0xA0:  # explicit version
        offset = _der_element(cert_der, offset)[2]
    for _field in range(5):  # serial, signature algorithm, issuer, validity, subject
        offset = _der_element(cert_der, offset)[2]
    tag, _start, end = _der_element(cert_der, offset)
    if tag != 0x30:
        raise ValueError("malformed certificate")
    return cert_der[offset:end]


def generate_certificate(
    hostname: str, addresses: Iterable[IPAddress], now: datetime.datetime | None = None
) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) in IPA's auto-TLS shape."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "tacet")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(a) for a in sorted(set(addresses), key=str)]
            ),
            critical=True,
        )
    )
    cert = builder.sign(key, hashes.SHA512())
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _reusable(
    cert_path: Path, key_path: Path, addresses: set[IPAddress], now: datetime.datetime
) -> bool:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    if key.public_key() != cert.public_key():
        return False  # e.g. a crash between writing the key and the certificate
    covered = {
        a
        for a in san.get_values_for_type(x509.IPAddress)
        if isinstance(a, IPv4Address | IPv6Address)
    }
    ok = cert.not_valid_after_utc - now > MIN_REMAINING and addresses <= covered
    if ok:  # remember the facts so the next start needs no X.509 parsing
        _store_facts(cert_path, covered, cert.not_valid_before_utc, cert.not_valid_after_utc)
    return ok


def _pair_loads(cert_path: Path, key_path: Path) -> bool:
    """The key belongs to the certificate (OpenSSL checks this when loading the pair)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError):
        return False
    return True


def _reusable_by_facts(
    cert_path: Path, key_path: Path, addresses: set[IPAddress], now: datetime.datetime
) -> bool | None:
    """Fast check from the facts file; None when the facts are missing or do not apply."""
    try:
        facts = json.loads((cert_path.parent / GENERATED_FACTS).read_text())
        pem = cert_path.read_text()
        if facts["fingerprint"] != fingerprint(pem):
            return None  # the certificate was replaced: decide by parsing it
        covered = {ipaddress.ip_address(a) for a in facts["addresses"]}
        not_before = datetime.datetime.fromisoformat(facts["not_before"])
        not_after = datetime.datetime.fromisoformat(facts["not_after"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (
        not_before <= now
        and not_after - now > MIN_REMAINING
        and addresses <= covered
        and _pair_loads(cert_path, key_path)
    )


def _store_facts(
    cert_path: Path,
    addresses: Iterable[IPAddress],
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> None:
    facts = {
        "fingerprint": fingerprint(cert_path.read_text()),
        "addresses": sorted(str(a) for a in addresses),
        "not_before": not_before.isoformat(),
        "not_after": not_after.isoformat(),
    }
    write_private(cert_path.parent / GENERATED_FACTS, json.dumps(facts).encode())


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file atomically, mode 0600 from the first byte."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def load_identity(
    state_dir: Path,
    addresses: Iterable[IPAddress],
    cert_file: Path | None = None,
    key_file: Path | None = None,
    hostname: str | None = None,
) -> Identity:
    """The configured certificate, else the generated one from the state dir (made if needed)."""
    if cert_file is not None and key_file is not None:
        pem = cert_file.read_text()
        return Identity(cert_file, key_file, pem, fingerprint(pem), generated=False)
    cert_path, key_path = state_dir / GENERATED_CERT, state_dir / GENERATED_KEY
    now = datetime.datetime.now(datetime.UTC)
    wanted = set(addresses)
    reusable = _reusable_by_facts(cert_path, key_path, wanted, now)
    if reusable is None:
        reusable = _reusable(cert_path, key_path, wanted, now)
    if not reusable:
        cert_pem, key_pem = generate_certificate(hostname or socket.gethostname(), wanted, now)
        write_private(key_path, key_pem)
        write_private(cert_path, cert_pem)
        _store_facts(cert_path, wanted, now - BACKDATE, now + VALIDITY)
    pem = cert_path.read_text()
    return Identity(cert_path, key_path, pem, fingerprint(pem), generated=True)


def _minimum(version: str) -> ssl.TLSVersion:
    return ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2


def server_context(
    identity: Identity, min_version: str = "1.2", client_ca: Path | None = None
) -> ssl.SSLContext:
    """The listener's context; with ``client_ca`` the handshake demands a client certificate
    chained to it (mutual TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _minimum(min_version)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(identity.cert_path, identity.key_path)
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    cafile: Path | str | None = None,
    cadata: str | None = None,
    insecure: bool = False,
    min_version: str = "1.2",
) -> ssl.SSLContext:
    """Context for talking to other parties (ironic API, tests). Verification is on
    unless ``insecure`` (ironic's ``ipa-insecure``) is explicitly set."""
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None, cadata=cadata)
    context.minimum_version = _minimum(min_version)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _RememberingSSLObject(ssl.SSLObject):
    """Hands its TLS session to its context once the first data arrives (TLS 1.3 sends
    the session ticket right after the handshake, before any answer)."""

    _tacet_context: ResumingContext | None = None
    _tacet_key: str | None = None

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        data = super().read(len, buffer)
        context = self._tacet_context
        if context is not None and data:
            self._tacet_context = None  # once per connection: the getter is not free
            context._connected(self)
        return data


class ResumingContext(ssl.SSLContext):
    """A client context that offers each server the TLS session it last got from it.

    asyncio's SSL transport has no ``session`` argument, so each connection's session is
    remembered by server name (when its first data arrives) and handed to ``wrap_bio``
    for the next connection to that name: a reconnect costs an abbreviated handshake.
    """

    def __init__(self, protocol: int = ssl.PROTOCOL_TLS_CLIENT) -> None:
        super().__init__()  # the protocol is taken by SSLContext.__new__
        self.sslobject_class = _RememberingSSLObject
        self._sessions: dict[str, ssl.SSLSession] = {}
        self.handshakes = 0
        self.resumed = 0

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        key = server_hostname.decode() if isinstance(server_hostname, bytes) else server_hostname
        if key is not None and session is None and not server_side:
            session = self._sessions.get(key)
        try:
            obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        except ValueError:  # a session from another context or an expired one
            obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname)
        if key is not None and not server_side and isinstance(obj, _RememberingSSLObject):
            obj._tacet_context, obj._tacet_key = self, key
        return obj

    def _connected(self, obj: _RememberingSSLObject) -> None:
        self.handshakes += 1
        if obj.session_reused:
            self.resumed += 1
            if obj._tacet_key in self._sessions:
                # Keep offering the session we hold: reading it again here costs a copy
                # and, with OpenSSL 3.0 and CPython 3.11, leaked about 6 KiB per resumed
                # connection (measured). A rejected ticket means a full handshake, and
                # then the new session is taken below.
                return
        session = obj.session
        if session is not None and obj._tacet_key is not None:
            self._sessions[obj._tacet_key] = session

    def sessions_known(self) -> int:
        return len(self._sessions)


CONDUCTOR_READ_BUFFER = 16 * 1024 + 512


_read_buffers = threading.local()  # one per thread: each event loop runs in one thread


def _shared_read_buffer(size: int) -> memoryview:
    view: memoryview | None = getattr(_read_buffers, "view", None)
    if view is None or len(view) < size:
        view = memoryview(bytearray(size))
        _read_buffers.view = view
    return view


def limit_tls_read_buffer(size: int = CONDUCTOR_READ_BUFFER) -> None:
    """Make asyncio's TLS connections read through one shared ``size``-byte buffer.

    asyncio's SSLProtocol zero-fills a ``max_size`` (256 KiB) bytearray per connection:
    a conductor keeping 5,000 agents alive would hold 1.25 GiB in read buffers alone.
    Agent answers are small, so a few TLS records per read is plenty. The buffer is
    only a landing place: ``buffer_updated`` copies what ``recv_into`` put there into
    the connection's own TLS input in the same callback, with no await in between, so
    all connections of a thread can share one (at 1,000 kept-alive connections that is
    16 MiB less). Process-wide; the conductor calls it (the agent, serving one
    conductor, keeps asyncio's default).
    """
    import asyncio.sslproto

    protocol: Any = asyncio.sslproto.SSLProtocol
    protocol.max_size = size
    if getattr(protocol, "_tacet_shared_buffer", False):
        return
    original = protocol.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._ssl_buffer_view = _shared_read_buffer(self.max_size)
        self._ssl_buffer = self._ssl_buffer_view.obj

    protocol.__init__ = __init__
    protocol._tacet_shared_buffer = True


def conductor_context(
    *,
    cafile: Path | str | None = None,
    cadata: str | None = None,
    certfile: Path | str | None = None,
    keyfile: Path | str | None = None,
    check_hostname: bool = True,
    min_version: str = "1.2",
) -> ResumingContext:
    """The conductor's context for talking to agents: always verifying.

    ``cafile`` is a CA (or an agent's own certificate); ``cadata`` is one pinned agent
    certificate. A pinned certificate is its own trust anchor (partial chain), so it
    may be a leaf issued by a CA, and the name check is skipped only then: the pin
    identifies the server, not its address. The client certificate is optional.
    """
    if cafile is None and cadata is None:
        raise ValueError("a conductor context needs a CA or a pinned certificate")
    context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = _minimum(min_version)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(cafile) if cafile else None, cadata=cadata)
    if cadata is not None:
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.check_hostname = False
    else:
        context.check_hostname = check_hostname
    if certfile is not None:
        context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    return context


def probe_context(
    certfile: Path | str | None = None, keyfile: Path | str | None = None
) -> ssl.SSLContext:
    """Only for reading an agent's certificate before trusting it (pin, binding, TOFU).

    It verifies nothing, so the conductor sends no secret over it: it compares the
    certificate it saw with the pin (or checks the binding, or records it for TOFU) and
    then talks to the agent only through ``conductor_context(cadata=<that certificate>)``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile is not None:  # an agent using mutual TLS refuses the handshake without it
        context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    return context


def local_addresses() -> set[IPAddress]:
    """Loopback plus every non-link-local address of this host (netifaces)."""
    import netifaces

    found: set[IPAddress] = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    for name in netifaces.interfaces():
        for family in (netifaces.AF_INET, netifaces.AF_INET6):
            for entry in netifaces.ifaddresses(name).get(family, []):
                try:
                    address = ipaddress.ip_address(entry["addr"].split("%", 1)[0])
                except (KeyError, ValueError):
                    continue
                if not address.is_link_local:
                    found.add(address)
    return found


_HASHED_NAME = re.compile(r"^[0-9a-f]{8}\.[0-9]+$")


def _hashed_directory(path: str | None) -> bool:
    """Whether ``path`` holds OpenSSL subject-hash links (as ``update-ca-certificates`` makes)."""
    if not path:
        return False
    try:
        with os.scandir(path) as entries:
            return any(_HASHED_NAME.match(entry.name) for entry in entries)
    except OSError:
        return False


@contextlib.contextmanager
def lazy_system_trust(environ: MutableMapping[str, str] = os.environ) -> Iterator[bool]:
    """Around importing aiohttp: find system CAs on demand instead of parsing the bundle.

    aiohttp builds its default client SSL contexts when it is imported, and OpenSSL 3
    parses the whole CA bundle file for each (about 100 ms here, a third of the
    agent's start). The hashed CA directory is the same store (Debian's
    update-ca-certificates writes both), looked up per issuer only when a certificate
    is verified, so verification is unchanged and nothing is switched off. Applies only
    when ``SSL_CERT_FILE`` is unset or names the system bundle itself (some images
    export it) and the directory is hashed; the environment is restored afterwards, so
    contexts built later see the usual defaults. Yields whether it applied.
    """
    defaults = ssl.get_default_verify_paths()
    bundle = environ.get("SSL_CERT_FILE")
    system_bundle = bundle is None or os.path.realpath(bundle) == os.path.realpath(
        defaults.openssl_cafile
    )
    applies = system_bundle and _hashed_directory(
        environ.get("SSL_CERT_DIR") or defaults.openssl_capath
    )
    if applies:
        environ["SSL_CERT_FILE"] = os.devnull
    try:
        yield applies
    finally:
        if applies:
            if bundle is None:
                environ.pop("SSL_CERT_FILE", None)
            else:
                environ["SSL_CERT_FILE"] = bundle
