"""The operator's PKI: a CA, conductor client certificates and per-node bundles.

Layout of a PKI directory (created 0700)::

    ca.pem                      CA certificate (public, 0644)
    ca-key.pem                  CA private key (0600)
    conductor.toml              what ``tacet --pki DIR`` uses: the CA, our client certificate
    clients/<name>.pem          conductor client certificate
    clients/<name>-key.pem      its private key (0600)
    nodes/<node>/server-cert.pem  the node's server certificate (what to pin)
    nodes/<node>/token          the node's agent token (0600)

A node's server key exists only inside its bundle (the initrd); the conductor keeps
the certificate and the token. Every new key is EC P-256, signed with SHA-256: 128-bit
security like TLS 1.3's X25519 key exchange, and OpenSSL signs and verifies P-256 30x and
10x faster than P-384, which is most of a handshake's CPU on both sides (a poller does
thousands). A CA made with P-384 by an earlier version keeps working and signs SHA-384.
"""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import json
import os
import re
import secrets
import stat
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conductor import cpio
from wire.certs import fingerprint
from wire.files import write_private
from wire.network_data import NetworkData, NetworkDataError
from wire.network_data import parse as parse_network_data

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
CLIENTS = "clients"
NODES = "nodes"
NODE_CERT = "server-cert.pem"
NODE_TOKEN = "token"
PROFILE = "conductor.toml"
PROFILE_KEYS = ("cafile", "cert", "key")

# Where the bundle's files land on the node (the agent's config directory); the
# names match agent.config's well-known files.
BUNDLE_DIR = "etc/tacet"
BUNDLE_CLIENT_CA = "client-ca.pem"
BUNDLE_SERVER_CERT = "server-cert.pem"
BUNDLE_SERVER_KEY = "server-key.pem"
BUNDLE_TOKEN = "token"
# OpenStack's network_data.json, read by the ramdisk's tacet-network before the network is up.
BUNDLE_NETWORK_DATA = "network_data.json"

# Certificates start a day in the past: a node's clock (an RTC kept in local time,
# a fresh board) is often hours off, and a "not yet valid" certificate fails the
# handshake just like a forged one.
BACKDATE = datetime.timedelta(days=1)
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 512

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no whitespace

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PkiError(Exception):
    """A problem the operator can fix; the message is one line."""


@dataclass(frozen=True)
class Issued:
    cert_path: Path
    key_path: Path
    cert_pem: bytes
    fingerprint: str


@dataclass(frozen=True)
class NodeBundle:
    node: str
    addresses: tuple[IPAddress, ...]
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    token: str = field(repr=False)
    network_data: bytes | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_pem.decode())

    def entries(self) -> list[cpio.Entry]:
        """The initrd's entries, unpacked over the node's root."""
        base = BUNDLE_DIR
        entries = [
            cpio.directory("etc", 0o755),
            cpio.directory(base, 0o700),
            cpio.file(f"{base}/{BUNDLE_CLIENT_CA}", self.ca_pem, 0o644),
            cpio.file(f"{base}/{BUNDLE_SERVER_CERT}", self.cert_pem, 0o644),
            cpio.file(f"{base}/{BUNDLE_SERVER_KEY}", self.key_pem, 0o600),
            cpio.file(f"{base}/{BUNDLE_TOKEN}", self.token.encode() + b"\n", 0o600),
        ]
        if self.network_data is not None:
            entries.append(cpio.file(f"{base}/{BUNDLE_NETWORK_DATA}", self.network_data, 0o644))
        return entries

    def cpio(self, mtime: int = 0) -> bytes:
        return cpio.pack(self.entries(), mtime=mtime)

    def initrd(self, mtime: int = 0) -> bytes:
        """The bundle as boot loaders append it: the cpio, gzip-compressed.

        The kernel reads an uncompressed cpio only at a 4-byte aligned offset, and some
        loaders put initrds back to back without padding (Linux's EFI stub with several
        ``initrd=`` options, as iPXE under UEFI does): after a ramdisk of odd length a
        plain cpio would be dropped. A compressed archive is found at any offset.
        """
        return gzip.compress(self.cpio(mtime), compresslevel=9, mtime=0)


@dataclass(frozen=True)
class NodeRecord:
    """What the conductor keeps about a node (DIR/nodes/<node>/)."""

    cert_path: Path
    token_path: Path


def check_name(name: str, what: str = "name") -> str:
    """A certificate/file name: DNS-like, no path separators, at most 64 characters."""
    if not (0 < len(name) <= 64 and _NAME.fullmatch(name)):
        raise PkiError(
            f"invalid {what} {name!r}: use up to 64 letters, digits, '-', '_' and single dots,"
            " starting with a letter or digit"
        )
    return name


def parse_addresses(texts: Iterable[str]) -> tuple[IPAddress, ...]:
    """IP addresses in the given order, duplicates dropped."""
    found: dict[IPAddress, None] = {}
    for text in texts:
        try:
            if "%" in text:  # a zone index cannot go into a certificate
                raise ValueError(text)
            found[ipaddress.ip_address(text.strip())] = None
        except ValueError:
            raise PkiError(f"invalid IP address {text!r}") from None
    return tuple(found)


def new_token() -> str:
    """A fresh 256-bit agent token."""
    return secrets.token_urlsafe(32)


def check_token(token: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise PkiError("invalid token: use printable ASCII without spaces, or --token auto")
    if not MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH:
        raise PkiError(
            f"invalid token: use {MIN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH} characters"
            " (--token auto makes a 256-bit one)"
        )
    return token


def _check_days(days: int) -> int:
    if days < 1:
        raise PkiError(f"invalid validity {days} days: must be at least 1")
    return days


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _write_public(path: Path, data: bytes) -> None:
    write_private(path, data)  # atomic; then widen to the usual certificate mode
    os.chmod(path, 0o644)


CURVE = ec.SECP256R1


def signature_hash(key: ec.EllipticCurvePrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """The hash that matches the signing key's strength (SHA-384 for an older P-384 CA)."""
    return hashes.SHA384() if key.curve.key_size > 256 else hashes.SHA256()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def init_ca(directory: Path | str, name: str = "Tacet CA", days: int = 3650) -> Issued:
    """Create a self-signed CA in ``directory``; refuses to replace an existing one."""
    directory = Path(directory)
    if not 0 < len(name) <= 64 or not name.isprintable():
        raise PkiError(f"invalid CA name {name!r}: use 1 to 64 printable characters")
    _check_days(days)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    for path in (cert_path, key_path):
        if path.exists():
            raise PkiError(f"a CA already exists in {directory} ({path}); refusing to overwrite it")
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(CURVE())
    subject = _cn(name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, signature_hash(key))
    )
    return _save(directory, cert_path, key_path, cert, key)


def _save(
    directory: Path,
    cert_path: Path,
    key_path: Path,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
) -> Issued:
    """Write a key (0600) and its certificate into a private directory."""
    _private_dir(directory)
    write_private(key_path, _key_pem(key))
    pem = _cert_pem(cert)
    _write_public(cert_path, pem)
    return Issued(cert_path, key_path, pem, fingerprint(pem.decode()))


def load_ca(
    directory: Path | str,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bytes]:
    """(certificate, key, certificate PEM) of the CA in ``directory``."""
    directory = Path(directory)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.is_file() or not key_path.is_file():
        raise PkiError(f"no CA in {directory} (create one with: tacet pki init {directory})")
    try:
        pem = cert_path.read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
    except (OSError, ValueError) as exc:
        raise PkiError(f"{cert_path}: cannot load the CA certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"{key_path}: cannot load the CA key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise PkiError(f"{key_path} is not the key of {cert_path}")
    return cert, key, pem


def _authority_key_id(ca: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public = ca.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = datetime.datetime.now(datetime.UTC)
    # A certificate cannot usefully outlive its issuer.
    not_after = min(now + datetime.timedelta(days=days), ca.not_valid_after_utc)
    if not_after <= now:
        raise PkiError(f"the CA expired on {ca.not_valid_after_utc:%Y-%m-%d}")
    key = ec.generate_private_key(CURVE())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_cn(name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca), critical=False)
        .sign(ca_key, signature_hash(ca_key))
    )
    return cert, key


def issue_client(directory: Path | str, name: str, days: int = 825) -> Issued:
    """A conductor client certificate, written to ``clients/<name>.pem`` and ``-key.pem``."""
    directory = Path(directory)
    check_name(name, "client name")
    _check_days(days)
    ca, ca_key, _ = load_ca(directory)
    clients = directory / CLIENTS
    cert_path, key_path = clients / f"{name}.pem", clients / f"{name}-key.pem"
    for path in (cert_path, key_path):
        if path.exists():
            raise PkiError(f"client {name!r} already exists ({path}); remove it to issue a new one")
    cert, key = _leaf(ca, ca_key, name, [x509.DNSName(name)], ExtendedKeyUsageOID.CLIENT_AUTH, days)
    return _save(clients, cert_path, key_path, cert, key)


def node_bundle(
    directory: Path | str,
    node: str,
    ips: Iterable[str] = (),
    token: str | None = None,
    days: int = 825,
    network_data: bytes | None = None,
) -> NodeBundle:
    """A node's server certificate and key, the client CA and a token (fresh when None),
    and the node's network_data.json when given (checked as the ramdisk will read it).

    Nothing is written; see :func:`save_node` and :meth:`NodeBundle.cpio`.
    """
    check_name(node, "node name")
    if network_data is not None:
        check_network_data(network_data)
    addresses = parse_addresses(ips)
    token = new_token() if token is None else check_token(token)
    _check_days(days)
    ca, ca_key, ca_pem = load_ca(directory)
    sans: list[x509.GeneralName] = [x509.DNSName(node)]
    sans += [x509.IPAddress(a) for a in addresses]
    cert, key = _leaf(ca, ca_key, node, sans, ExtendedKeyUsageOID.SERVER_AUTH, days)
    return NodeBundle(node, addresses, ca_pem, _cert_pem(cert), _key_pem(key), token, network_data)


def check_network_data(data: bytes) -> NetworkData:
    """``data`` read with the ramdisk's own parser; PkiError names the offending place."""
    try:
        return parse_network_data(data)
    except NetworkDataError as exc:
        raise PkiError(f"network data: {exc}") from None


def save_node(directory: Path | str, bundle: NodeBundle) -> NodeRecord:
    """Keep the node's certificate and token in ``nodes/<node>/`` (replacing older ones)."""
    node_dir = _private_dir(_private_dir(Path(directory) / NODES) / check_name(bundle.node))
    os.chmod(node_dir, stat.S_IRWXU)
    token_path, cert_path = node_dir / NODE_TOKEN, node_dir / NODE_CERT
    write_private(token_path, bundle.token.encode() + b"\n")
    _write_public(cert_path, bundle.cert_pem)
    return NodeRecord(cert_path, token_path)


# -- reading what the operator points at -------------------------------------------------
def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PkiError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def read_certificates(path: Path, what: str = "certificate") -> list[x509.Certificate]:
    """The PEM certificates in ``path``; a one-line error naming the file otherwise."""
    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise PkiError(f"{path}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----)")
    return certificates


def read_private_key(path: Path) -> object:
    """An unencrypted PEM private key (an encrypted one would make OpenSSL prompt)."""
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PkiError(f"{path}: the private key is encrypted; give an unencrypted one") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PkiError(f"{path}: not a PEM private key") from None


def check_client_pair(cert_path: Path, key_path: Path) -> None:
    """Our client certificate and its key must belong together, checked before connecting."""
    cert = read_certificates(cert_path, "client certificate")[0]
    key = read_private_key(key_path)
    public = getattr(key, "public_key", None)
    if public is None or public() != cert.public_key():
        raise PkiError(f"{key_path} is not the private key of {cert_path}")


def read_token_file(path: Path) -> str:
    """A token file's one line: printable ASCII, not empty."""
    data = _read(path, "token file")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise PkiError(f"{path}: the token must be printable ASCII") from None
    if not token:
        raise PkiError(f"{path}: the token file is empty")
    if not _TOKEN.fullmatch(token):
        raise PkiError(f"{path}: the token must be printable ASCII without spaces")
    return token


# -- the conductor profile: what ``--pki DIR`` uses ---------------------------------------
@dataclass(frozen=True)
class Profile:
    """The CA to verify agents with and our client certificate, from DIR/conductor.toml."""

    directory: Path
    cafile: Path
    cert: Path | None = None
    key: Path | None = None


def write_profile(directory: Path | str, client: str | None = None) -> Path:
    """(Re)write DIR/conductor.toml naming the CA and, when given, the client ``client``."""
    directory = Path(directory)
    lines = [
        "# What `tacet --pki DIR` uses to talk to agents; paths are relative to this directory.",
        f"cafile = {json.dumps(CA_CERT)}",
    ]
    if client is not None:
        lines.append(f"cert = {json.dumps(f'{CLIENTS}/{client}.pem')}")
        lines.append(f"key = {json.dumps(f'{CLIENTS}/{client}-key.pem')}")
    path = directory / PROFILE
    _write_public(path, "\n".join(lines).encode() + b"\n")
    return path


def load_profile(directory: Path | str) -> Profile:
    """DIR/conductor.toml, checked: known keys, files that exist, a key that fits."""
    directory = Path(directory)
    path = directory / PROFILE
    if not directory.is_dir():
        raise PkiError(f"{directory}: no such PKI directory (make one with: tacet pki dev DIR)")
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise PkiError(
            f"{path}: cannot read the conductor profile: {exc.strerror or exc}"
            " (tacet pki init and issue-client write it)"
        ) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PkiError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(PROFILE_KEYS))
    if unknown:
        raise PkiError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(PROFILE_KEYS)})")
    paths: dict[str, Path] = {}
    for name, value in data.items():
        if not isinstance(value, str) or not value:
            raise PkiError(f"{path}: {name} must be a file path")
        paths[name] = directory / Path(value).expanduser()
    if "cafile" not in paths:
        raise PkiError(f"{path}: cafile is missing")
    if ("cert" in paths) != ("key" in paths):
        raise PkiError(f"{path}: cert and key go together")
    return Profile(directory, paths["cafile"], paths.get("cert"), paths.get("key"))


def adopt_client(directory: Path | str, name: str) -> bool:
    """Make client ``name`` the profile's when it names none yet (the first client issued);
    True when it did. A later client is switched to by editing conductor.toml."""
    directory = Path(directory)
    path = directory / PROFILE
    if path.exists():
        try:
            if load_profile(directory).cert is not None:
                return False
        except PkiError:
            return False  # an operator's edited profile stays as it is
    write_profile(directory, name)
    return True


def _names(cert: x509.Certificate) -> tuple[set[str], set[IPAddress]]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    names = {n.lower() for n in sans.get_values_for_type(x509.DNSName)}
    addresses = sans.get_values_for_type(x509.IPAddress)
    return names, {a for a in addresses if isinstance(a, IPAddress)}


def node_token_file(directory: Path | str, host: str) -> Path | None:
    """The token file of the node whose server certificate names ``host`` (an IP SAN or a
    DNS name), or None; two nodes naming the same host is an error (which one is it?)."""
    nodes = Path(directory) / NODES
    try:
        # A certificate names an address without its zone (fe80::1%eth0 is fe80::1 there).
        address: IPAddress | None = ipaddress.ip_address(host.strip("[]").partition("%")[0])
    except ValueError:
        address = None
    found = []
    for cert_path in sorted(nodes.glob(f"*/{NODE_CERT}")):
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError):
            continue  # not a node record we can read; other nodes may still match
        names, addresses = _names(cert)
        if (address is not None and address in addresses) or host.lower() in names:
            found.append(cert_path.parent)
    if len(found) > 1:
        listed = ", ".join(p.name for p in found)
        raise PkiError(
            f"{host}: several nodes in {directory} name this host ({listed}); give --token-file"
        )
    if not found or not (found[0] / NODE_TOKEN).is_file():
        return None
    return found[0] / NODE_TOKEN
