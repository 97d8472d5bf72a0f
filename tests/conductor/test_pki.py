"""The operator PKI (conductor.pki, conductor.cpio, ``tacet pki``): certificate shapes,
file modes, validation, the CLI's output, the initrd unpacked by the real ``cpio``,
and a real mutual-TLS handshake on loopback with the issued certificates."""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conductor import cli, cpio, pki
from wire.certs import fingerprint

CPIO = shutil.which("cpio")
needs_cpio = pytest.mark.skipif(CPIO is None, reason="the cpio tool is not installed (tools/setup)")

BUNDLE_FILES = {
    "etc": (stat.S_IFDIR, 0o755),
    "etc/tacet": (stat.S_IFDIR, 0o700),
    "etc/tacet/client-ca.pem": (stat.S_IFREG, 0o644),
    "etc/tacet/server-cert.pem": (stat.S_IFREG, 0o644),
    "etc/tacet/server-key.pem": (stat.S_IFREG, 0o600),
    "etc/tacet/token": (stat.S_IFREG, 0o600),
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


def verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Check the signature with the issuer's public key (raises InvalidSignature)."""
    public = issuer.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    public.verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )
    assert cert.issuer == issuer.subject


def initrd_archive(path: Path) -> bytes:
    """The cpio inside an initrd the CLI wrote: gzip-compressed, as a kernel reads it at
    any offset (a plain cpio must start 4-byte aligned, which loaders that put initrds
    back to back do not ensure)."""
    data = path.read_bytes()
    assert data[:2] == b"\x1f\x8b", "the initrd is not gzip-compressed"
    return gzip.decompress(data)


def unpack(archive: bytes, into: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Unpack with the real cpio; {relative path: (file type, permissions, contents)}."""
    assert CPIO is not None
    into.mkdir()
    done = subprocess.run(
        [CPIO, "-idm", "--no-absolute-filenames", "--quiet"],
        input=archive,
        cwd=into,
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    found = {}
    for path in sorted(into.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        found[str(path.relative_to(into))] = (
            stat.S_IFMT(st.st_mode),
            stat.S_IMODE(st.st_mode),
            content,
        )
    return found


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    pki.init_ca(directory)
    return directory


# --- certificates ---------------------------------------------------------------------


def test_init_ca_shape_and_modes(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "pki"
    issued = pki.init_ca(directory, name="Test CA", days=100)
    assert issued.cert_path == directory / "ca.pem"
    assert issued.key_path == directory / "ca-key.pem"
    assert mode(directory) == 0o700
    assert mode(issued.key_path) == 0o600
    assert mode(issued.cert_path) == 0o644
    assert not list(directory.glob("*.tmp"))

    cert = load(issued.cert_path)
    assert issued.fingerprint == fingerprint(issued.cert_path.read_text())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test CA"
    assert cert.issuer == cert.subject
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    verify_signed_by(cert, cert)

    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(public)

    key = serialization.load_pem_private_key(issued.key_path.read_bytes(), password=None)
    assert key.public_key() == public
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=99) < lifetime <= datetime.timedelta(days=100)


def test_init_ca_refuses_to_overwrite(ca_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    with pytest.raises(pki.PkiError, match="already exists"):
        pki.init_ca(ca_dir)
    assert {p.name: p.read_bytes() for p in ca_dir.iterdir()} == before

    (ca_dir / "ca.pem").unlink()  # a lone key is a CA too: never replace it
    with pytest.raises(pki.PkiError, match="already exists"):
        pki.init_ca(ca_dir)
    assert (ca_dir / "ca-key.pem").read_bytes() == before["ca-key.pem"]


def test_client_certificate_shape(ca_dir: Path, tmp_path: Path) -> None:
    issued = pki.issue_client(ca_dir, "conductor-1", days=30)
    assert issued.cert_path == ca_dir / "clients" / "conductor-1.pem"
    assert issued.key_path == ca_dir / "clients" / "conductor-1-key.pem"
    assert mode(issued.key_path) == 0o600
    assert mode(ca_dir / "clients") == 0o700

    ca, cert = load(ca_dir / "ca.pem"), load(issued.cert_path)
    verify_signed_by(cert, ca)
    other = load(pki.init_ca(tmp_path / "other").cert_path)
    with pytest.raises(InvalidSignature):
        verify_signed_by(cert, other)

    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "conductor-1"
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["conductor-1"]
    assert san.get_values_for_type(x509.IPAddress) == []
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert ext(cert, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(public)
    )
    key = serialization.load_pem_private_key(issued.key_path.read_bytes(), password=None)
    assert key.public_key() == public
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(days=31)

    with pytest.raises(pki.PkiError, match="already exists"):
        pki.issue_client(ca_dir, "conductor-1")
    assert issued.cert_path.read_bytes() == issued.cert_pem


def test_new_keys_are_p256_with_sha256(ca_dir: Path) -> None:
    ca = load(ca_dir / "ca.pem")
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    issued = pki.issue_client(ca_dir, "conductor-256")
    leaf = load(issued.cert_path)
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)


def test_a_p384_ca_of_an_earlier_version_still_issues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pki, "CURVE", ec.SECP384R1)
    pki.init_ca(tmp_path / "old")
    monkeypatch.undo()
    ca = load(tmp_path / "old" / "ca.pem")
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA384)
    leaf = load(pki.issue_client(tmp_path / "old", "conductor-1").cert_path)
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA384)  # the CA's strength
    leaf.verify_directly_issued_by(ca)
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)


def test_leaf_does_not_outlive_the_ca(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    pki.init_ca(directory, days=10)
    cert = load(pki.issue_client(directory, "c").cert_path)
    assert cert.not_valid_after_utc <= load(directory / "ca.pem").not_valid_after_utc


def test_node_bundle_shape(ca_dir: Path) -> None:
    bundle = pki.node_bundle(ca_dir, "node-7", ["10.0.0.5", "fd00::5", "10.0.0.5"], None)
    assert bundle.ca_pem == (ca_dir / "ca.pem").read_bytes()
    ca = load(ca_dir / "ca.pem")
    cert = x509.load_pem_x509_certificate(bundle.cert_pem)
    verify_signed_by(cert, ca)
    assert bundle.fingerprint == fingerprint(bundle.cert_pem.decode())

    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-7"
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    assert not ext(cert, x509.BasicConstraints).value.ca
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node-7"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("fd00::5"),
    ]
    key = serialization.load_pem_private_key(bundle.key_pem, password=None)
    assert key.public_key() == public

    # A fresh 256-bit token each time (token_urlsafe(32): 43 URL-safe characters).
    again = pki.node_bundle(ca_dir, "node-7", [], None)
    assert len(bundle.token) == 43 and bundle.token != again.token
    assert bundle.token not in repr(bundle)
    assert "PRIVATE KEY" not in repr(bundle)
    # Nothing written by the pure function.
    assert not (ca_dir / "nodes").exists()


@pytest.mark.parametrize(
    "name",
    ["a/b", "../x", "x/..", "..", ".x", "-x", "a..b", "a.", "", "a b", "x" * 65, "é", "a\\b"],
)
def test_bad_names_are_refused(ca_dir: Path, name: str) -> None:
    with pytest.raises(pki.PkiError, match="invalid client name"):
        pki.issue_client(ca_dir, name)
    with pytest.raises(pki.PkiError, match="invalid node name"):
        pki.node_bundle(ca_dir, name, [], None)
    assert not (ca_dir / "clients").exists()


@pytest.mark.parametrize("name", ["conductor-1", "node_3.rack2", "N", "x" * 64])
def test_good_names_are_accepted(ca_dir: Path, name: str) -> None:
    assert pki.issue_client(ca_dir, name).cert_path.name == f"{name}.pem"


@pytest.mark.parametrize("ip", ["1.2.3", "10.0.0.256", "fe80::1%eth0", "node-1", ""])
def test_bad_ips_are_refused(ca_dir: Path, ip: str) -> None:
    with pytest.raises(pki.PkiError, match="invalid IP address"):
        pki.node_bundle(ca_dir, "node-1", ["10.0.0.1", ip], None)


@pytest.mark.parametrize("token", ["short", "has space in it 12345", "tab\tinside-0123456789", ""])
def test_bad_tokens_are_refused(ca_dir: Path, token: str) -> None:
    with pytest.raises(pki.PkiError, match="invalid token"):
        pki.node_bundle(ca_dir, "node-1", [], token)


def test_missing_ca(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match="no CA in"):
        pki.issue_client(tmp_path, "c")
    with pytest.raises(pki.PkiError, match="no CA in"):
        pki.node_bundle(tmp_path, "n", [], None)


def test_mismatched_ca_key_is_refused(ca_dir: Path, tmp_path: Path) -> None:
    other = pki.init_ca(tmp_path / "other")
    (ca_dir / "ca-key.pem").write_bytes(other.key_path.read_bytes())
    with pytest.raises(pki.PkiError, match="is not the key of"):
        pki.issue_client(ca_dir, "c")


# --- cpio -----------------------------------------------------------------------------


def test_cpio_layout_by_hand() -> None:
    archive = cpio.pack([cpio.directory("d", 0o750), cpio.file("d/f", b"abc", 0o600)], mtime=7)
    assert archive[:6] == b"070701"
    assert len(archive) % 4 == 0
    header = archive[6:110]
    fields = [int(header[i : i + 8], 16) for i in range(0, 104, 8)]
    _ino, mode_, uid, gid, nlink, mtime, size, *_, namesize, check = fields
    assert (mode_, uid, gid, nlink, mtime, size, namesize, check) == (
        stat.S_IFDIR | 0o750,
        0,
        0,
        2,
        7,
        0,
        2,
        0,
    )
    assert archive[110:112] == b"d\0"  # 110 + 2 is aligned: no padding
    # The file: 110 + len("d/f\0") = 114, padded to 116; data 3, padded to 4.
    second = archive[112:]
    assert second[:6] == b"070701"
    assert int(second[6:14], 16) == 2  # its own inode number
    assert int(second[14:22], 16) == stat.S_IFREG | 0o600
    assert int(second[54:62], 16) == 3  # filesize
    assert second[110:120] == b"d/f\0\0\0abc\0"
    trailer = second[120:]
    assert trailer[:6] == b"070701"
    assert int(trailer[94:102], 16) == 11
    assert trailer[110:] == b"TRAILER!!!\0" + b"\0" * 3  # 121 padded to 124


@needs_cpio
def test_cpio_unpacked_by_real_cpio(tmp_path: Path) -> None:
    # Names and sizes that hit every padding remainder.
    entries = [cpio.directory("d", 0o755)]
    expected: dict[str, tuple[int, int, bytes | None]] = {"d": (stat.S_IFDIR, 0o755, None)}
    for n in range(1, 9):
        name, data, perm = "d/" + "n" * n, bytes(range(n - 1)) * 3, 0o600 + n % 2 * 0o44
        entries.append(cpio.file(name, data, perm))
        expected[name] = (stat.S_IFREG, perm, data)
    entries += [cpio.directory("d/sub", 0o700), cpio.file("d/sub/empty", b"", 0o640)]
    expected["d/sub"] = (stat.S_IFDIR, 0o700, None)
    expected["d/sub/empty"] = (stat.S_IFREG, 0o640, b"")
    archive = cpio.pack(entries, mtime=1_700_000_000)
    assert unpack(archive, tmp_path / "out") == expected
    assert (tmp_path / "out" / "d" / "nn").stat().st_mtime == 1_700_000_000


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([cpio.file("/etc/x", b"")], "plain relative path"),
        ([cpio.directory("a"), cpio.file("a/../b", b"")], "plain relative path"),
        ([cpio.directory("a/")], "plain relative path"),
        ([cpio.file("a/b", b"")], "before its directory"),
        ([cpio.file("a", b""), cpio.file("a/b", b"")], "before its directory"),
        ([cpio.file("a", b""), cpio.file("a", b"")], "duplicate"),
        ([cpio.file("TRAILER!!!", b"")], "reserved"),
        ([cpio.Entry("dev", stat.S_IFCHR | 0o600)], "neither"),
    ],
)
def test_cpio_refuses_bad_entries(entries: list[cpio.Entry], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cpio.pack(entries)


# --- the CLI ----------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, out: str, err: str, text: str) -> None:
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert text in err


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "pki"
    status, out, err = run_cli(capsys, "pki", "init", directory)
    assert status == 0 and err == ""
    assert f"CA certificate: {directory / 'ca.pem'}" in out

    cases = [
        (["pki", "init", directory], "already exists"),
        (["pki", "issue-client", tmp_path / "none", "c"], "no CA in"),
        (["pki", "issue-client", directory, "../evil"], "invalid client name"),
        (["pki", "node-bundle", directory, "--node", "a/b", "-o", tmp_path / "x"], "node name"),
        (
            ["pki", "node-bundle", directory, "--node", "n", "--ip", "1.2.3", "-o", tmp_path / "x"],
            "invalid IP address '1.2.3'",
        ),
        (["pki", "node-bundle", directory, "-o", tmp_path / "x"], "--node"),
        (["pki", "node-bundle", directory, "--node", "n", "-o", tmp_path / "no/x"], "cannot write"),
        (["pki", "init", directory, "--days", "0"], "invalid validity"),
        (["pki", "frobnicate"], "invalid choice"),
        ([], "required"),
    ]
    for argv, text in cases:
        assert_one_line_error(*run_cli(capsys, *argv), text)
    assert not (tmp_path / "x").exists()
    assert not (directory / "nodes").exists()  # nothing recorded for a failed bundle


def test_cli_node_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory, output = tmp_path / "pki", tmp_path / "node-1.cpio"
    assert run_cli(capsys, "pki", "init", directory)[0] == 0
    status, out, err = run_cli(
        capsys, "pki", "node-bundle", directory, "--node", "node-1", "--ip", "192.0.2.1",
        "-o", output,
    )  # fmt: skip
    assert status == 0 and err == ""

    record = directory / "nodes" / "node-1"
    token = (record / "token").read_text()
    assert token.endswith("\n") and len(token.strip()) == 43
    token = token.strip()
    assert token not in out  # printed only when asked
    cert_pem = (record / "server-cert.pem").read_text()
    assert out.splitlines() == [
        "node: node-1",
        f"initrd: {output}",
        f"server certificate: {record / 'server-cert.pem'}",
        f"server certificate SHA-256 fingerprint: {fingerprint(cert_pem)}",
        f"token file: {record / 'token'}",
    ]
    assert mode(output) == 0o600
    assert mode(record / "token") == 0o600
    assert mode(record) == 0o700 and mode(directory / "nodes") == 0o700
    assert not (record / "server-key.pem").exists()  # the key lives only in the initrd

    # The initrd carries the same certificate and token as the record.
    found = {e_name: data for e_name, data in _members(initrd_archive(output))}
    assert found["etc/tacet/server-cert.pem"].decode() == cert_pem
    assert found["etc/tacet/token"] == f"{token}\n".encode()

    # Asked for: printed. A given token is used as is.
    given = "given-token-0123456789abcdef"
    status, out, err = run_cli(
        capsys, "pki", "node-bundle", directory, "--node", "node-1", "--token", given,
        "--show-token", "-o", output,
    )  # fmt: skip
    assert status == 0 and err == ""
    assert out.splitlines()[-1] == f"token: {given}"
    assert (record / "token").read_text() == f"{given}\n"
    assert _members_dict(output)["etc/tacet/token"] == f"{given}\n".encode()

    status, out, _ = run_cli(
        capsys, "pki", "node-bundle", directory, "--node", "node-1", "--token", given, "-o", output
    )
    assert status == 0 and given not in out


def _members(archive: bytes) -> list[tuple[str, bytes]]:
    """A minimal independent newc reader (for content checks; the real cpio checks layout)."""
    result, offset = [], 0
    while True:
        assert archive[offset : offset + 6] == b"070701"
        size = int(archive[offset + 54 : offset + 62], 16)
        namesize = int(archive[offset + 94 : offset + 102], 16)
        name = archive[offset + 110 : offset + 110 + namesize - 1].decode()
        start = offset + 110 + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return result
        result.append((name, archive[start : start + size]))
        offset = start + size + (-size % 4)


def _members_dict(path: Path) -> dict[str, bytes]:
    return dict(_members(initrd_archive(path)))


def test_cli_output_does_not_leak_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "pki"
    _, init_out, _ = run_cli(capsys, "pki", "init", directory)
    _, client_out, _ = run_cli(capsys, "pki", "issue-client", directory, "conductor")
    _, node_out, _ = run_cli(
        capsys, "pki", "node-bundle", directory, "--node", "n", "-o", tmp_path / "n.cpio"
    )
    printed = init_out + client_out + node_out
    assert "PRIVATE" not in printed
    assert (directory / "nodes" / "n" / "token").read_text().strip() not in printed
    assert mode(directory / "clients" / "conductor-key.pem") == 0o600


@needs_cpio
def test_bundle_unpacked_by_real_cpio_and_loaded_by_the_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory, output = tmp_path / "pki", tmp_path / "node.cpio"
    assert run_cli(capsys, "pki", "init", directory)[0] == 0
    status, _, _ = run_cli(
        capsys, "pki", "node-bundle", directory, "--node", "node-1", "--ip", "127.0.0.1",
        "-o", output,
    )  # fmt: skip
    assert status == 0
    found = unpack(initrd_archive(output), tmp_path / "root")
    assert {name: found[name][:2] for name in found} == BUNDLE_FILES

    record = directory / "nodes" / "node-1"
    key_pem = found["etc/tacet/server-key.pem"][2]
    cert_pem = found["etc/tacet/server-cert.pem"][2]
    assert found["etc/tacet/client-ca.pem"][2] == (directory / "ca.pem").read_bytes()
    assert cert_pem == (record / "server-cert.pem").read_bytes()
    assert found["etc/tacet/token"][2] == (record / "token").read_bytes()
    assert key_pem is not None and cert_pem is not None
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key() == x509.load_pem_x509_certificate(cert_pem).public_key()

    # The agent's configuration picks the unpacked files up from its config directory.
    from agent.config import load_config

    (tmp_path / "cmdline").write_text("quiet\n")
    config_dir = tmp_path / "root" / "etc" / "tacet"
    config = load_config(tmp_path / "cmdline", config_dir, tmp_path / "state")
    assert config.agent_token == (record / "token").read_text().strip()
    assert config.client_ca_file == config_dir / "client-ca.pem"
    assert config.cert_file == config_dir / "server-cert.pem"
    assert config.key_file == config_dir / "server-key.pem"


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "tacet"
    assert script.exists(), "reinstall the venv: pip install -e '.[dev]'"
    done = subprocess.run(
        [script, "pki", "init", tmp_path / "pki"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    again = subprocess.run(
        [script, "pki", "init", tmp_path / "pki"], capture_output=True, text=True, timeout=30
    )
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "already exists" in again.stderr


# --- a real mutual-TLS handshake --------------------------------------------------------


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> tuple[BaseException | None, BaseException | None, bytes]:
    """One connection on loopback: (server error, client error, what the client read)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    server_error: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(5)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (OSError, ssl.SSLError) as exc:
            server_error.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_error, received = None, b""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            received = tls.recv(2)
    except (OSError, ssl.SSLError) as exc:
        client_error = exc
    thread.join(5)
    listener.close()
    assert not thread.is_alive()
    return (server_error[0] if server_error else None), client_error, received


@pytest.fixture
def mtls(tmp_path: Path) -> dict[str, Path]:
    directory = tmp_path / "pki"
    pki.init_ca(directory)
    client = pki.issue_client(directory, "conductor")
    bundle = pki.node_bundle(directory, "node-1", ["127.0.0.1"], None)
    node = tmp_path / "node"
    node.mkdir()
    for name, data in [
        ("server-cert.pem", bundle.cert_pem),
        ("server-key.pem", bundle.key_pem),
        ("client-ca.pem", bundle.ca_pem),
    ]:
        (node / name).write_bytes(data)
    pki.init_ca(tmp_path / "other")
    rogue = pki.issue_client(tmp_path / "other", "conductor")  # same name, wrong CA
    return {
        "ca": directory / "ca.pem",
        "client_cert": client.cert_path,
        "client_key": client.key_path,
        "rogue_cert": rogue.cert_path,
        "rogue_key": rogue.key_path,
        "server_cert": node / "server-cert.pem",
        "server_key": node / "server-key.pem",
        "client_ca": node / "client-ca.pem",
    }


def server_context(files: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files["server_cert"], files["server_key"])
    context.load_verify_locations(cafile=files["client_ca"])
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(files: dict[str, Path], who: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files["ca"]))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    if who is not None:
        context.load_cert_chain(files[f"{who}_cert"], files[f"{who}_key"])
    return context


@pytest.mark.parametrize("server_hostname", ["node-1", "127.0.0.1"])
def test_mutual_tls_handshake(mtls: dict[str, Path], server_hostname: str) -> None:
    server_error, client_error, received = handshake(
        server_context(mtls), client_context(mtls, "client"), server_hostname
    )
    assert (server_error, client_error, received) == (None, None, b"ok")


@pytest.mark.parametrize(
    ("who", "reason"), [("rogue", "CERTIFICATE_VERIFY_FAILED"), (None, "PEER_DID_NOT_RETURN")]
)
def test_mutual_tls_refuses_other_clients(
    mtls: dict[str, Path], who: str | None, reason: str
) -> None:
    server_error, client_error, received = handshake(
        server_context(mtls), client_context(mtls, who), "node-1"
    )
    assert received != b"ok"
    assert isinstance(server_error, ssl.SSLError) and reason in str(server_error), server_error
    # TLS 1.3: the client learns of the refusal on its first read (an alert or EOF).
    assert client_error is not None or received == b""


def test_client_refuses_a_server_outside_its_names(mtls: dict[str, Path]) -> None:
    _, client_error, received = handshake(
        server_context(mtls), client_context(mtls, "client"), "node-2"
    )
    assert isinstance(client_error, ssl.SSLCertVerificationError) and received == b""


def test_dev_makes_ca_client_and_node_bundle_in_one_step(tmp_path, capsys):
    from conductor.cli import main

    target = tmp_path / "dev"
    assert main(["pki", "dev", str(target)]) == 0
    for rel in (
        "ca.pem",
        "ca-key.pem",
        "clients/conductor.pem",
        "clients/conductor-key.pem",
        "nodes/node-1/token",
        "node-1.cpio",
    ):
        assert (target / rel).is_file(), rel
    for secret in ("ca-key.pem", "clients/conductor-key.pem", "nodes/node-1/token", "node-1.cpio"):
        assert (target / secret).stat().st_mode & 0o777 == 0o600, secret
    token = (target / "nodes/node-1/token").read_text().strip()
    assert token not in capsys.readouterr().out
    assert main(["pki", "dev", str(target)]) == 2  # never overwrites an existing CA


# --- what `tacet --pki DIR` reads ---------------------------------------------------------
def test_profile_names_the_ca_and_the_first_client(tmp_path, capsys):
    from conductor.cli import main

    directory = tmp_path / "pki"
    assert main(["pki", "init", str(directory)]) == 0
    profile = pki.load_profile(directory)
    assert profile.cafile == directory / "ca.pem" and profile.cert is None
    assert main(["pki", "issue-client", str(directory), "ops"]) == 0
    assert main(["pki", "issue-client", str(directory), "other"]) == 0
    out = capsys.readouterr().out
    assert "now uses this client" in out and "keeps its client" in out
    profile = pki.load_profile(directory)
    assert profile.cert == directory / "clients/ops.pem"
    assert profile.key == directory / "clients/ops-key.pem"
    pki.check_client_pair(profile.cert, profile.key)
    assert mode(directory / "conductor.toml") == 0o644  # nothing secret in it


def test_profile_errors(tmp_path):
    directory = tmp_path / "pki"
    directory.mkdir()
    with pytest.raises(pki.PkiError, match="cannot read the conductor profile"):
        pki.load_profile(directory)
    for text, message in (
        ("cafile = 1\n", "cafile must be a file path"),
        ('cert = "c.pem"\n', "cafile is missing"),
        ('cafile = "ca.pem"\ncert = "c.pem"\n', "cert and key go together"),
        ("cafile = [\n", "not valid TOML"),
    ):
        (directory / "conductor.toml").write_text(text)
        with pytest.raises(pki.PkiError, match=message):
            pki.load_profile(directory)


def test_node_token_file_by_the_names_in_the_nodes_certificate(ca_dir):
    for node, ips in (("node-1", ["127.0.0.1"]), ("node-2", ["192.0.2.7", "2001:db8::7"])):
        pki.save_node(ca_dir, pki.node_bundle(ca_dir, node, ips))
    assert pki.node_token_file(ca_dir, "127.0.0.1") == ca_dir / "nodes/node-1/token"
    assert pki.node_token_file(ca_dir, "2001:db8::7") == ca_dir / "nodes/node-2/token"
    assert pki.node_token_file(ca_dir, "[2001:db8::7]") == ca_dir / "nodes/node-2/token"
    assert pki.node_token_file(ca_dir, "NODE-2") == ca_dir / "nodes/node-2/token"
    assert pki.node_token_file(ca_dir, "192.0.2.8") is None
    assert pki.node_token_file(ca_dir, "node-3") is None
    pki.save_node(ca_dir, pki.node_bundle(ca_dir, "node-3", ["127.0.0.1"]))
    with pytest.raises(pki.PkiError, match=r"several nodes .* \(node-1, node-3\)"):
        pki.node_token_file(ca_dir, "127.0.0.1")


def test_files_are_checked_with_their_name_in_the_error(ca_dir, tmp_path):
    client = pki.issue_client(ca_dir, "c")
    pki.check_client_pair(client.cert_path, client.key_path)
    with pytest.raises(pki.PkiError, match=f"^{ca_dir / 'ca-key.pem'} is not the private key of"):
        pki.check_client_pair(client.cert_path, ca_dir / "ca-key.pem")
    encrypted = tmp_path / "encrypted.pem"
    key = serialization.load_pem_private_key(client.key_path.read_bytes(), password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(pki.PkiError, match=f"^{encrypted}: the private key is encrypted"):
        pki.read_private_key(encrypted)
    with pytest.raises(pki.PkiError, match=f"^{client.cert_path}: not a PEM private key"):
        pki.read_private_key(client.cert_path)
    with pytest.raises(pki.PkiError, match=f"^{client.key_path}: not a PEM certificate"):
        pki.read_certificates(client.key_path)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(pki.PkiError, match=f"^{empty}: the token file is empty"):
        pki.read_token_file(empty)
