"""tacet-network's boot step over a temporary tree: which source wins, what is written,
what the console is told, and what happens to input that cannot be used."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.netconfig import __main__ as entry
from agent.netconfig.boot import EXIT_REFUSED, VMEDIA_WAIT, config_drive_wait, configure
from agent.netconfig.cmdline import GENERATOR_MARK
from agent.netconfig.collect import (
    CONFIG_DRIVE_FILE,
    CONFIG_DRIVE_LABELS,
    CollectError,
    Collector,
    mount_read_only,
)
from agent.netconfig.render import NO_NETWORK, NO_NETWORK_FILE

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "network_data"
STATIC = FIXTURES / "ironic-static-ipv4" / "network_data.json"
BOND = FIXTURES / "bond-802.3ad-vlan" / "network_data.json"
STATIC_CMDLINE = "console=ttyS0 ip=192.0.2.10::192.0.2.1:255.255.255.0::eth0:none"


class Tree:
    """A ramdisk's paths under tmp_path, and fakes for the config drive."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bundle = root / "etc/tacet/network_data.json"
        self.by_label = root / "dev/disk/by-label"
        self.cmdline = root / "proc/cmdline"
        self.network_dir = root / "run/systemd/network"
        self.record = root / "run/tacet/network.json"
        self.drive = root / "drive"  # what the config drive holds
        self.device = root / "dev/sr0"
        self.mounted: list[Path] = []
        self.blkid: dict[str, Path] = {}
        self.lines: list[str] = []
        for directory in (self.by_label, self.cmdline.parent, self.drive, self.device.parent):
            directory.mkdir(parents=True, exist_ok=True)
        self.device.touch()
        self.cmdline.write_text("console=ttyS0\n")

    @contextlib.contextmanager
    def mount(self, device: Path) -> Iterator[Path]:
        self.mounted.append(device)
        yield self.drive

    def collector(self, **overrides: object) -> Collector:
        arguments: dict[str, object] = {
            "bundle_file": self.bundle,
            "by_label": self.by_label,
            "cmdline": self.cmdline,
            "mount": self.mount,
            "find_by_label": self.blkid.get,
            "find_boot_medium": lambda: None,
        }
        arguments.update(overrides)
        return Collector(**arguments)  # type: ignore[arg-type]

    def run(self, **overrides: object) -> int:
        return configure(
            self.collector(**overrides),
            self.network_dir,
            say=self.lines.append,
            record_file=self.record,
        )

    def recorded(self) -> dict[str, Any]:
        return json.loads(self.record.read_text())

    def written(self) -> dict[str, str]:
        if not self.network_dir.is_dir():
            return {}
        return {p.name: p.read_text() for p in sorted(self.network_dir.iterdir())}

    def on_drive(self, source: Path) -> None:
        target = self.drive / CONFIG_DRIVE_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


def expected(case: str) -> dict[str, str]:
    directory = FIXTURES / case / "expected"
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


def test_nothing_configured_leaves_dhcp(tree: Tree):
    assert tree.run() == 0
    assert tree.written() == {}
    assert tree.mounted == []
    assert tree.lines == [
        "no network_data.json and no ip=/vlan=/bond= parameters: DHCP on every NIC"
    ]
    assert tree.recorded() == {"version": 1, "source": "dhcp", "interfaces": []}


def test_the_bundles_file_wins_over_drive_and_command_line(tree: Tree):
    tree.bundle.parent.mkdir(parents=True)
    shutil.copy(STATIC, tree.bundle)
    tree.on_drive(BOND)
    (tree.by_label / "config-2").symlink_to(tree.device)
    tree.cmdline.write_text(STATIC_CMDLINE)
    assert tree.run() == 0
    assert tree.written() == expected("ironic-static-ipv4")
    assert tree.mounted == []
    assert tree.recorded()["source"] == "network_data"
    assert tree.recorded()["interfaces"][0]["addresses"] == ["192.168.122.42/24"]
    assert tree.lines[0] == (
        f"network from network_data.json in the node bundle ({tree.bundle}): 1 links, 1 networks"
    )
    assert tree.lines[1] == (
        "ignored (network_data.json takes precedence):"
        " ip=192.0.2.10::192.0.2.1:255.255.255.0::eth0:none"
    )
    assert os.stat(tree.network_dir / "10-tacet-525400d36a71.network").st_mode & 0o777 == 0o644


@pytest.mark.parametrize("label", ["config-2", "CONFIG-2"])
def test_the_config_drive_by_label(tree: Tree, label: str):
    tree.on_drive(BOND)
    (tree.by_label / label).symlink_to(tree.device)
    assert tree.run() == 0
    assert tree.mounted == [tree.device]
    assert tree.written() == expected("bond-802.3ad-vlan")


def test_the_config_drive_found_by_probing_when_udev_has_no_link_yet(tree: Tree):
    tree.on_drive(STATIC)
    tree.blkid["config-2"] = tree.device
    assert tree.run() == 0
    assert tree.mounted == [tree.device]
    assert tree.written() == expected("ironic-static-ipv4")


def test_waiting_for_a_late_config_drive(tree: Tree):
    tree.on_drive(STATIC)
    naps: list[float] = []

    def appears_on_third_look(label: str) -> Path | None:
        return tree.device if len(naps) >= 2 and label == "config-2" else None

    collector = tree.collector(
        find_by_label=appears_on_third_look, wait_seconds=60, sleep=naps.append
    )
    assert configure(collector, tree.network_dir, say=tree.lines.append) == 0
    assert naps == [0.5, 0.5]
    assert tree.mounted == [tree.device]


def test_waiting_ends_when_the_virtual_media_is_not_a_config_drive(tree: Tree):
    naps: list[float] = []
    collector = tree.collector(
        wait_seconds=60,
        sleep=naps.append,
        find_boot_medium=lambda: tree.device if len(naps) >= 3 else None,
    )
    assert configure(collector, tree.network_dir, say=tree.lines.append) == 0
    assert naps == [0.5, 0.5, 0.5]
    assert tree.mounted == []
    assert tree.written() == {}


def test_a_config_drive_appearing_between_two_looks_is_read(tree: Tree):
    """The medium shows up after the label look and before the medium look (its driver
    finished probing in between): it is the config drive, not some other CD."""
    tree.on_drive(STATIC)
    looks: list[str] = []

    def appears_after_the_first_look(label: str) -> Path | None:
        looks.append(label)
        return tree.device if len(looks) > len(CONFIG_DRIVE_LABELS) else None

    collector = tree.collector(
        find_by_label=appears_after_the_first_look,
        wait_seconds=60,
        sleep=lambda _seconds: None,
        find_boot_medium=lambda: tree.device,
    )
    assert configure(collector, tree.network_dir, say=tree.lines.append) == 0
    assert tree.mounted == [tree.device]
    assert tree.written() == expected("ironic-static-ipv4")


@pytest.mark.parametrize(
    ("cmdline", "wait", "problem"),
    [
        ("console=ttyS0", 0.0, None),
        ("boot_method=vmedia ipa-agent-token=x", VMEDIA_WAIT, None),
        ("boot_method=pxe", 0.0, None),
        ("tacet.config-drive-wait=12.5", 12.5, None),
        ("boot_method=vmedia tacet.config-drive-wait=0", 0.0, None),
        (
            "tacet.config-drive-wait=soon",
            0.0,
            "tacet.config-drive-wait=soon: must be a number of seconds from 0 to 300; ignored",
        ),
        (
            "boot_method=vmedia tacet.config-drive-wait=301",
            VMEDIA_WAIT,
            "tacet.config-drive-wait=301: must be a number of seconds from 0 to 300; ignored",
        ),
    ],
)
def test_how_long_to_wait_for_a_config_drive(cmdline: str, wait: float, problem: str | None):
    assert config_drive_wait(cmdline.split()) == (wait, problem)


def test_a_drive_without_network_data_falls_through_to_the_command_line(tree: Tree):
    (tree.by_label / "config-2").symlink_to(tree.device)
    tree.cmdline.write_text(STATIC_CMDLINE)
    assert tree.run() == 0
    assert tree.mounted == [tree.device]
    written = tree.written()
    assert list(written) == ["20-tacet-cmdline-90-eth0.network"]
    assert "Address=192.0.2.10/24" in written["20-tacet-cmdline-90-eth0.network"]
    assert tree.recorded()["source"] == "cmdline"
    assert tree.recorded()["interfaces"][0]["name"] == "eth0"
    assert tree.recorded()["interfaces"][0]["addresses"] == ["192.0.2.10/24"]


def test_command_line_files_sort_before_the_dhcp_file_and_replace_the_generators(tree: Tree):
    tree.network_dir.mkdir(parents=True)
    # What systemd-network-generator.service wrote earlier in the boot.
    (tree.network_dir / "90-eth0.network").write_text(f"{GENERATOR_MARK}\n[Match]\nName=eth0\n")
    (tree.network_dir / "90-boot0.link").write_text(f"{GENERATOR_MARK}\n[Match]\n")
    (tree.network_dir / "50-operator.network").write_text("[Match]\nName=eth9\n")
    tree.cmdline.write_text(
        "bond=bond0:eth0,eth1:mode=active-backup,miimon=100"
        " ip=192.0.2.30::192.0.2.1:255.255.255.0::bond0:none"
    )
    assert tree.run() == 0
    written = tree.written()
    assert sorted(written) == [
        "20-tacet-cmdline-90-bond0.netdev",
        "20-tacet-cmdline-90-bond0.network",
        "20-tacet-cmdline-90-eth0.network",
        "20-tacet-cmdline-90-eth1.network",
        "50-operator.network",
        "90-boot0.link",  # udev has used it; the NIC keeps its name
    ]
    assert all(name < "80-tacet-wired.network" for name in written if "cmdline" in name)
    assert "Mode=active-backup" in written["20-tacet-cmdline-90-bond0.netdev"]
    assert "removed systemd-network-generator's 90-eth0.network (decided here instead)" in (
        tree.lines
    )


def test_network_data_also_replaces_the_generators_files(tree: Tree):
    tree.network_dir.mkdir(parents=True)
    (tree.network_dir / "90-eth0.network").write_text(f"{GENERATOR_MARK}\n[Match]\nName=eth0\n")
    tree.bundle.parent.mkdir(parents=True)
    shutil.copy(STATIC, tree.bundle)
    assert tree.run() == 0
    assert tree.written() == expected("ironic-static-ipv4")


def test_a_second_run_replaces_the_first(tree: Tree):
    tree.bundle.parent.mkdir(parents=True)
    shutil.copy(BOND, tree.bundle)
    assert tree.run() == 0
    shutil.copy(STATIC, tree.bundle)
    assert tree.run() == 0
    assert tree.written() == expected("ironic-static-ipv4")
    assert [i["addresses"] for i in tree.recorded()["interfaces"]] == [["192.168.122.42/24"]]


def test_refused_input_replaces_an_earlier_record(tree: Tree):
    """The agent must not wait for, or advertise, addresses of an earlier run."""
    tree.bundle.parent.mkdir(parents=True)
    shutil.copy(STATIC, tree.bundle)
    assert tree.run() == 0
    shutil.copy(FIXTURES / "malformed" / "truncated.json", tree.bundle)
    assert tree.run() == EXIT_REFUSED
    assert tree.recorded() == {"version": 1, "source": "refused", "interfaces": []}


def test_malformed_network_data_leaves_the_nics_down_and_says_why(tree: Tree):
    tree.bundle.parent.mkdir(parents=True)
    shutil.copy(FIXTURES / "malformed" / "bad-gateway.json", tree.bundle)
    assert tree.run() == EXIT_REFUSED
    assert tree.written() == {NO_NETWORK_FILE: NO_NETWORK}
    assert tree.lines == [
        f"refused: network_data.json from node bundle ({tree.bundle}):"
        " networks[1].routes[0].gateway: not an IP address",
        "no network configured: the agent is unreachable until this is fixed"
        " (tacet.network-fallback=dhcp on the kernel command line allows DHCP instead)",
    ]


def test_malformed_input_falls_back_to_dhcp_only_when_allowed(tree: Tree):
    tree.bundle.parent.mkdir(parents=True)
    shutil.copy(FIXTURES / "malformed" / "truncated.json", tree.bundle)
    tree.cmdline.write_text("console=ttyS0 tacet.network-fallback=dhcp")
    assert tree.run() == EXIT_REFUSED
    assert tree.written() == {}
    assert tree.lines[-1] == "falling back to DHCP on every NIC (tacet.network-fallback=dhcp)"


def test_a_malformed_command_line_is_named(tree: Tree):
    tree.cmdline.write_text(f"{STATIC_CMDLINE} vlan=eth0.5000:eth0")
    assert tree.run() == EXIT_REFUSED
    assert tree.written() == {NO_NETWORK_FILE: NO_NETWORK}
    assert tree.lines[0] == (
        "refused: kernel command line: systemd-network-generator refused vlan=eth0.5000:eth0"
        " (Numerical result out of range); see dracut.cmdline(7) for the syntax"
    )


def test_an_unknown_fallback_value_is_reported_and_means_none(tree: Tree):
    tree.cmdline.write_text("tacet.network-fallback=yes vlan=eth0.5000:eth0")
    assert tree.run() == EXIT_REFUSED
    assert tree.lines[0] == "tacet.network-fallback=yes: must be one of none, dhcp; ignored"
    assert NO_NETWORK_FILE in tree.written()


def test_warnings_reach_the_console(tree: Tree):
    tree.bundle.parent.mkdir(parents=True)
    tree.bundle.write_text(
        '{"links": [{"id": "e", "type": "phy", "ethernet_mac_address": "52:54:00:00:00:01",'
        ' "speed": 10}], "networks": [{"link": "e", "type": "ipv4_dhcp"}]}'
    )
    assert tree.run() == 0
    assert tree.lines[0] == "network_data.json: links[0].speed: not supported, ignored"


def test_a_drive_that_cannot_be_mounted_is_refused(tree: Tree):
    (tree.by_label / "config-2").symlink_to(tree.device)

    @contextlib.contextmanager
    def failing(device: Path) -> Iterator[Path]:
        raise CollectError(f"mount -o ro {device}: wrong fs type")
        yield device  # pragma: no cover

    assert tree.run(mount=failing) == EXIT_REFUSED
    assert tree.lines[0] == f"refused: mount -o ro {tree.device}: wrong fs type"


def test_the_command(tree: Tree, capsys: pytest.CaptureFixture[str]):
    tree.bundle.parent.mkdir(parents=True)
    shutil.copy(STATIC, tree.bundle)
    tree.cmdline.write_text("console=ttyS0 tacet.config-drive-wait=soon")
    code = entry.main(
        [
            "--network-dir",
            str(tree.network_dir),
            "--bundle-file",
            str(tree.bundle),
            "--cmdline",
            str(tree.cmdline),
            "--by-label",
            str(tree.by_label),
            "--record",
            str(tree.record),
        ]
    )
    assert code == 0
    assert tree.recorded()["interfaces"][0]["mac"] == "52:54:00:d3:6a:71"
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0] == "tacet-network: tacet.config-drive-wait=soon: must be a number of seconds"
        " from 0 to 300; ignored"
    )
    assert all(line.startswith("tacet-network: ") for line in out)
    assert tree.written() == expected("ironic-static-ipv4")


def test_mount_read_only_on_a_real_file_system(tmp_path: Path):
    """The real mount: an ext4 image labelled config-2, mounted read-only and unmounted."""
    source = tmp_path / "source"
    (source / "openstack/latest").mkdir(parents=True)
    shutil.copy(STATIC, source / CONFIG_DRIVE_FILE)
    image = tmp_path / "config-2.img"
    with image.open("wb") as file:
        file.truncate(4 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-L", "config-2", "-d", str(source), str(image)], check=True)
    with mount_read_only(image) as root:
        assert (root / CONFIG_DRIVE_FILE).read_bytes() == STATIC.read_bytes()
        with pytest.raises(OSError):
            (root / "written").write_text("x")
        mountpoint = root
    assert not mountpoint.exists()
    with open("/proc/self/mountinfo") as mounts:
        assert str(mountpoint) not in mounts.read()
