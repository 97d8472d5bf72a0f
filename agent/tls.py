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
import ipaddress
import json
import os
import re
import socket
import ssl
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from wire.certs import fingerprint
from wire.files import write_private
from wire.tls import apply_policy

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
    )
    ips: list[x509.GeneralName] = [x509.IPAddress(a) for a in sorted(set(addresses), key=str)]
    # A SAN extension may not be empty: with no address (tests), name the host instead.
    builder = builder.add_extension(
        x509.SubjectAlternativeName(ips or [x509.DNSName(hostname[:64] or "tacet")]),
        critical=True,
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


def server_context(
    identity: Identity, min_version: str = "1.2", client_ca: Path | None = None
) -> ssl.SSLContext:
    """The listener's context; with ``client_ca`` the handshake demands a client certificate
    chained to it (mutual TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    apply_policy(context, min_version)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(identity.cert_path, identity.key_path)
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
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
