"""tacet-agent --bundle: a per-node bundle (made by conductor.pki) run without unpacking."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.__main__ import main
from agent.bundle import MAX_BYTES, BundleError, Member, extract, parse_newc, unpacked
from agent.config import load_config
from conductor import cpio, pki
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
TACET = "import sys; from conductor.cli import main; sys.exit(main(sys.argv[1:]))"


def raw_member(name: str, mode: int, data: bytes = b"") -> bytes:
    """One newc entry written by hand, so that the entries cpio.pack refuses can be made."""
    encoded = name.encode() + b"\0"
    fields = (1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    head = b"070701" + b"".join(b"%08X" % value for value in fields) + encoded
    return head + b"\0" * (-len(head) % 4) + data + b"\0" * (-len(data) % 4)


def archive(*members: bytes) -> bytes:
    return b"".join(members) + raw_member("TRAILER!!!", 0)


FILE, DIR, LINK = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o700, stat.S_IFLNK | 0o777


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A CA, the conductor's client certificate and node-1's bundle, as the CLI makes them."""
    base = tmp_path_factory.mktemp("pki")
    pki.init_ca(base)
    client = pki.issue_client(base, "conductor")
    bundle = pki.node_bundle(base, "node-1", ["127.0.0.1"])
    path = base / "node-1.cpio"
    path.write_bytes(bundle.cpio())
    return base, client, bundle, path


def test_reads_what_the_conductor_writes(made):
    _, _, bundle, path = made
    members = parse_newc(path.read_bytes())
    assert members == [Member(e.name, e.mode, e.data) for e in bundle.entries()]


def test_unpacked_privately_and_removed_after(made):
    _, _, bundle, path = made
    with unpacked(path) as config_dir:
        root = config_dir.parent.parent
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        assert (config_dir / "server-cert.pem").read_bytes() == bundle.cert_pem
        assert stat.S_IMODE((config_dir / "server-key.pem").stat().st_mode) == 0o600
        assert stat.S_IMODE((config_dir / "token").stat().st_mode) == 0o600
    assert not root.exists()


def test_a_bundle_made_by_the_cpio_tool_from_a_tree(tmp_path):
    """``find . | cpio -o -H newc`` also lists the root itself, as "."."""
    tree = tmp_path / "tree"
    (tree / "etc" / "tacet").mkdir(parents=True)
    (tree / "etc" / "tacet" / "token").write_text("t0ken\n")
    (tree / "etc" / "tacet" / "token").chmod(0o600)
    listing = subprocess.run(
        ["find", "."], cwd=tree, capture_output=True, text=True, check=True
    ).stdout
    made = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        cwd=tree,
        input=listing.encode(),
        capture_output=True,
        check=True,
    ).stdout
    names = [member.name for member in parse_newc(made)]
    assert names == [".", "etc", "etc/tacet", "etc/tacet/token"]
    config_dir = extract(parse_newc(made), tmp_path / "into")
    assert (config_dir / "token").read_text() == "t0ken\n"
    assert stat.S_IMODE((config_dir / "token").stat().st_mode) == 0o600


def test_the_bundle_is_the_configuration_directory(made, tmp_path):
    _, _, bundle, _ = made
    toml = cpio.file("etc/tacet/agent.toml", b"allow-loop-devices = true\nlisten-port = 9443\n")
    path = tmp_path / "with-settings.cpio"
    path.write_bytes(cpio.pack([*bundle.entries(), toml]))
    (tmp_path / "cmdline").write_text("quiet\n")
    with unpacked(path) as config_dir:
        config = load_config(tmp_path / "cmdline", config_dir, tmp_path / "state")
        assert config.agent_token == bundle.token
        assert config.cert_file == config_dir / "server-cert.pem"
        assert config.client_ca_file == config_dir / "client-ca.pem"
        assert config.allow_loop_devices and config.listen_port == 9443


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([raw_member("etc", DIR), raw_member("etc/passwd", FILE, b"x")], "outside etc/tacet/"),
        ([raw_member("/etc/tacet/token", FILE, b"x")], "not a plain relative path"),
        ([raw_member("etc/tacet/../../../tmp/x", FILE, b"x")], "not a plain relative path"),
        ([raw_member("etc/tacet", DIR), raw_member("etc/tacet/k", LINK, b"/etc/shadow")], "not a"),
        (
            [raw_member("etc/tacet/token", FILE, b"a"), raw_member("etc/tacet/token", FILE, b"b")],
            "listed twice",
        ),
        ([raw_member("etc", DIR)], "holds no etc/tacet/"),
    ],
)
def test_refused_entries(tmp_path, members, reason):
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(BundleError, match=re.escape(reason)):
        extract(parse_newc(archive(*members)), into)
    assert not (tmp_path / "tmp").exists() and not (into / "etc" / "passwd").exists()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "ends before its trailer"),
        (b"\x1f\x8b" + bytes(200), "not a newc cpio archive"),
        (raw_member("etc/tacet/token", FILE, b"0123456789")[:-8], "truncated"),
        (b"070701" + b"Z" * 104, "malformed cpio header"),
    ],
)
def test_malformed_archives(data, reason):
    with pytest.raises(BundleError, match=reason):
        parse_newc(data)


def test_a_bad_bundle_stops_the_start_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.cpio"
    bad.write_bytes(archive(raw_member("etc/passwd", FILE, b"x")))
    argv = ["--bundle", str(bad), "--state-dir", str(tmp_path / "s")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "outside etc/tacet/" in err and str(bad) in err
    assert main(["--bundle", str(tmp_path / "missing.cpio")]) == 2
    assert "cannot read it" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one configuration source, not two
        main(["--bundle", str(bad), "--config-dir", str(tmp_path)])


def tacet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", TACET, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_agent_runs_from_a_bundle_and_answers_tacet_status(made, tmp_path):
    base, client, bundle, path = made
    port = free_port()
    (tmp_path / "cmdline").write_text(f"tacet.listen-host=127.0.0.1 tacet.listen-port={port}\n")
    temp = tmp_path / "tmp"
    temp.mkdir()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "--bundle",
            str(path),
            "--cmdline-file",
            str(tmp_path / "cmdline"),
            "--state-dir",
            str(tmp_path / "state"),
            "--power-backend",
            "recording",
        ],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(temp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stdout.readline()
        assert f"certificate-sha256={bundle.fingerprint}" in banner, banner + process.stderr.read(
            2000
        )
        (unpacked_root,) = temp.iterdir()
        assert stat.S_IMODE(unpacked_root.stat().st_mode) == 0o700
        token = tmp_path / "token"
        token.write_text(bundle.token + "\n")
        address = f"127.0.0.1:{port}"
        trust = ["--cafile", str(base / "ca.pem"), "--token-file", str(token)]
        mine = ["--cert", str(client.cert_path), "--key", str(client.key_path)]
        done = tacet("status", address, *trust, *mine, "--json", "--retries", "0")
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["certificate_fingerprint"] == bundle.fingerprint
        assert status["mode"] == "passive" and status["binding"]  # the bundle's token
        # The bundle's client CA is in force: without our certificate, no answer.
        refused = tacet("status", address, *trust, "--retries", "0")
        assert refused.returncode != 0
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert list(temp.iterdir()) == []  # the unpacked secrets are gone


def test_the_gzip_initrd_the_cli_writes_is_read_as_is(made, tmp_path):
    _, _, bundle, _ = made
    initrd = tmp_path / "node-1.initrd"
    initrd.write_bytes(bundle.initrd())
    assert initrd.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(initrd.read_bytes()) == bundle.cpio()
    with unpacked(initrd) as config_dir:
        assert (config_dir / "server-cert.pem").read_bytes() == bundle.cert_pem
        assert (config_dir / "token").read_text() == bundle.token + "\n"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (gzip.compress(bytes(MAX_BYTES + 1)), f"inflates past {MAX_BYTES} bytes"),
        (gzip.compress(b"070701")[:-9], "truncated"),
        (b"\x1f\x8b" + bytes(20), "not a valid gzip file"),
    ],
    ids=["bomb", "truncated", "garbage"],
)
def test_a_bad_gzip_bundle_is_refused(tmp_path, data, reason):
    path = tmp_path / "bad"
    path.write_bytes(data)
    with pytest.raises(BundleError, match=reason), unpacked(path):
        pass
