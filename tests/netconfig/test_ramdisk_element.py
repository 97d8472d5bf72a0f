"""The ramdisk element wires tacet-network in: its unit, its enabling, the modules it needs."""

from __future__ import annotations

import tomllib
from pathlib import Path

from agent.netconfig import boot, cmdline, collect

ROOT = Path(__file__).resolve().parents[2]
ELEMENT = ROOT / "dib-elements" / "tacet-ramdisk"
SYSTEMD = ELEMENT / "static" / "etc" / "systemd" / "system"


def settings(path: Path) -> dict[str, list[str]]:
    """A unit file's values by key (a key may repeat; space-separated values are split)."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).extend(value.split() if " " in value else [value])
    return found


def test_the_unit_runs_the_command_before_networkd_and_speaks_on_the_console():
    unit = settings(SYSTEMD / "tacet-network.service")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tacet-network"] == "agent.netconfig.__main__:main"
    assert unit["ExecStart"] == ["/usr/local/bin/tacet-network"]
    assert "systemd-networkd.service" in unit["Before"]
    assert unit["WantedBy"] == ["systemd-networkd.service"]
    assert "systemd-network-generator.service" in unit["After"]
    assert unit["Type"] == ["oneshot"]
    assert unit["StandardOutput"] == ["journal+console"]


def test_the_install_script_enables_it():
    script = (ELEMENT / "install.d" / "50-tacet-agent").read_text()
    enable = script.split("systemctl enable", 1)[1].split("\n\n", 1)[0].split("systemctl", 1)[0]
    assert "tacet-network.service" in enable
    assert "systemd-network-generator.service" in enable


def test_bonding_and_vlan_modules_stay_in_the_ramdisk():
    environment = (ELEMENT / "environment.d" / "10-tacet-ramdisk.bash").read_text()
    modules = environment.split('TACET_RAMDISK_MODULES:-"', 1)[1].split('"', 1)[0].split()
    assert {"bonding", "8021q"} <= set(modules)


def test_the_generator_runs_for_the_same_keys_tacet_network_hands_it():
    dropin = SYSTEMD / "systemd-network-generator.service.d" / "tacet.conf"
    keys = {value.lstrip("|") for value in settings(dropin)["ConditionKernelCommandLine"]}
    assert keys == cmdline.NETWORK_KEYS | {"net.ifname_policy"}


def test_the_unit_runs_only_when_there_is_something_to_read():
    """Without these, Python would start on DHCP's path for nothing: the unit's
    conditions name every source tacet-network reads."""
    unit = settings(SYSTEMD / "tacet-network.service")
    keys = {value.lstrip("|") for value in unit["ConditionKernelCommandLine"]}
    assert all(v.startswith("|") for v in unit["ConditionKernelCommandLine"])
    # A condition matches its key as written; the generator reads "_" and "-" alike.
    assert keys == cmdline.NETWORK_KEYS | {"net.ifname_policy", "boot_method=vmedia", boot.WAIT_KEY}
    paths = {value.lstrip("|") for value in unit["ConditionPathExists"]}
    assert paths == {str(collect.BUNDLE_FILE)} | {
        str(collect.BY_LABEL / label) for label in collect.CONFIG_DRIVE_LABELS
    }
    # Not ordered after the drivers: networkd must not wait for them through this unit.
    assert "tacet-load-drivers.service" not in unit["After"]
