"""tacet pki node-bundle --network-data: checked by the ramdisk's parser, put in the initrd."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.bundle import gunzipped, parse_newc
from agent.netconfig.boot import configure
from agent.netconfig.collect import Collector
from conductor import pki
from tests.conductor.test_pki import assert_one_line_error, run_cli

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "network_data"
BOND = FIXTURES / "bond-802.3ad-vlan" / "network_data.json"


@pytest.fixture
def directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "pki"
    assert run_cli(capsys, "pki", "init", directory)[0] == 0
    return directory


def test_the_file_travels_in_the_initrd_and_the_ramdisk_reads_it(
    directory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    output = tmp_path / "node-1.cpio"
    status, out, err = run_cli(
        capsys, "pki", "node-bundle", directory, "--node", "node-1",
        "--network-data", BOND, "-o", output,
    )  # fmt: skip
    assert (status, err) == (0, "")
    assert out.splitlines()[-1] == (
        f"network data: {BOND} (in the initrd as /etc/tacet/network_data.json)"
    )
    members = {m.name: m for m in parse_newc(gunzipped(output.read_bytes()))}
    member = members["etc/tacet/network_data.json"]
    assert member.data == BOND.read_bytes()
    assert stat.S_IMODE(member.mode) == 0o644 and stat.S_ISREG(member.mode)

    # What the kernel unpacks is what tacet-network reads at boot.
    root = tmp_path / "root"
    (root / "etc/tacet").mkdir(parents=True)
    (root / "etc/tacet/network_data.json").write_bytes(member.data)
    (root / "cmdline").write_text("console=ttyS0\n")
    collector = Collector(
        bundle_file=root / "etc/tacet/network_data.json",
        by_label=root / "none",
        cmdline=root / "cmdline",
        find_by_label=lambda label: None,
    )
    assert configure(collector, root / "run", say=lambda line: None) == 0
    expected = FIXTURES / "bond-802.3ad-vlan" / "expected"
    assert sorted(p.name for p in (root / "run").iterdir()) == sorted(
        p.name for p in expected.iterdir()
    )


def test_without_the_option_the_initrd_has_no_network_data(directory: Path):
    bundle = pki.node_bundle(directory, "node-2", [])
    assert bundle.network_data is None
    assert "etc/tacet/network_data.json" not in {e.name for e in bundle.entries()}


def test_unsupported_keys_are_warned_about(
    directory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    source = tmp_path / "network_data.json"
    source.write_text(
        '{"links": [{"id": "e", "type": "phy", "ethernet_mac_address": "52:54:00:00:00:01",'
        ' "speed": 10}], "networks": []}'
    )
    status, _, err = run_cli(
        capsys, "pki", "node-bundle", directory, "--node", "n", "--network-data", source,
        "-o", tmp_path / "n.cpio",
    )  # fmt: skip
    assert status == 0
    assert err == f"tacet: warning: {source}: links[0].speed: not supported, ignored\n"


@pytest.mark.parametrize(
    ("fixture", "text"),
    [
        ("bad-gateway.json", "network data: networks[1].routes[0].gateway: not an IP address"),
        ("truncated.json", "network data: not JSON"),
    ],
)
def test_a_malformed_file_is_a_one_line_error_and_nothing_is_written(
    directory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fixture: str, text: str
):
    output = tmp_path / "n.cpio"
    result = run_cli(
        capsys, "pki", "node-bundle", directory, "--node", "n",
        "--network-data", FIXTURES / "malformed" / fixture, "-o", output,
    )  # fmt: skip
    assert_one_line_error(*result, text)
    assert not output.exists()
    assert not (directory / "nodes").exists()


def test_an_unreadable_file_is_a_one_line_error(
    directory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    missing = tmp_path / "missing.json"
    result = run_cli(
        capsys, "pki", "node-bundle", directory, "--node", "n", "--network-data", missing,
        "-o", tmp_path / "n.cpio",
    )  # fmt: skip
    assert_one_line_error(*result, f"cannot read {missing}: No such file or directory")
