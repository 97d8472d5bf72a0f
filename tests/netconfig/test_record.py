"""The record tacet-network leaves for the agent: read back from the networkd files written,
for network_data.json (the fixtures' rendered files) and for the kernel command line
(the real systemd-network-generator's files)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from agent.config import DEFAULT_STATE_DIR
from agent.netconfig import cmdline, record
from agent.netconfig.record import RecordError, from_networkd, parse, read, sections, unconfigured
from agent.netconfig.render import render
from wire.network_data import parse as parse_network_data

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "network_data"


def rendered(case: str) -> dict[str, str]:
    return render(parse_network_data((FIXTURES / case / "network_data.json").read_bytes()))


def by_name_or_mac(made: dict) -> dict:
    return {i["name"] or i["mac"]: i for i in made["interfaces"]}


def test_sections_keep_repeated_keys_and_skip_comments():
    text = (
        "# header\n[Match]\nName=eth0\n\n[Network]\nAddress=192.0.2.1/24\nAddress=2001:db8::1/64\n"
    )
    assert sections(text) == [
        ("Match", [("Name", "eth0")]),
        ("Network", [("Address", "192.0.2.1/24"), ("Address", "2001:db8::1/64")]),
    ]


def test_a_bond_with_two_vlans_from_network_data():
    made = from_networkd(rendered("bond-802.3ad-vlan"), "network_data")
    assert made["version"] == 1 and made["source"] == "network_data"
    found = by_name_or_mac(made)
    eno1, eno2 = found["a0:36:9f:32:47:d8"], found["a0:36:9f:32:47:d9"]
    assert (eno1["kind"], eno1["name"], eno1["bond"], eno1["mtu"]) == (
        "ethernet",
        None,
        "bond0",
        9000,
    )
    assert eno2["bond"] == "bond0"
    bond = found["bond0"]
    assert bond["kind"] == "bond" and bond["bond_mode"] == "802.3ad"
    assert bond["bond_members"] == [
        {"name": None, "mac": "a0:36:9f:32:47:d8"},
        {"name": None, "mac": "a0:36:9f:32:47:d9"},
    ]
    assert bond["addresses"] == [] and bond["vlan_id"] is None
    vlan = found["vlan101"]
    assert (vlan["kind"], vlan["vlan_id"]) == ("vlan", 101)
    assert vlan["vlan_parent"] == {"name": "bond0", "mac": None}
    assert vlan["addresses"] == ["198.51.100.113/24"]
    assert (vlan["dhcp4"], vlan["dhcp6"], vlan["ipv6_ra"]) == (False, False, False)
    assert found["vlan401"]["addresses"] == ["10.176.12.19/19"]
    assert parse(json.dumps(made)).static == (
        ipaddress.ip_interface("198.51.100.113/24"),
        ipaddress.ip_interface("10.176.12.19/19"),
    )


def test_dual_stack_static_addresses_in_file_order():
    made = from_networkd(rendered("static-dual-stack"), "network_data")
    (nic,) = made["interfaces"]
    assert nic["mac"] == "fa:16:3e:9c:bf:3d" and nic["kind"] == "ethernet"
    assert nic["addresses"] == ["10.20.30.41/23", "2001:db8:30::41/64"]
    assert [str(a) for a in parse(json.dumps(made)).static] == nic["addresses"]


def test_slaac_and_dhcp_are_asked_for_not_addresses():
    slaac = from_networkd(rendered("ipv6-only-slaac"), "network_data")["interfaces"][0]
    assert (slaac["addresses"], slaac["dhcp4"], slaac["dhcp6"], slaac["ipv6_ra"]) == (
        [],
        False,
        False,
        True,
    )
    bond = by_name_or_mac(from_networkd(rendered("bond-active-backup-dhcp"), "network_data"))
    assert bond["bond0"]["dhcp4"] is True and bond["bond0"]["addresses"] == []
    assert bond["bond0"]["bond_mode"] == "active-backup"


def test_the_kernel_command_lines_files_through_the_real_generator():
    parameters = [
        "bond=bond0:eth0,eth1:mode=active-backup",
        "vlan=bond0.100:bond0",
        "ip=192.0.2.20::192.0.2.1:255.255.255.0::bond0.100:none",
        "ip=[2001:db8::20]::[2001:db8::1]:64::bond0.100:none",
    ]
    files = cmdline.add_bond_options(cmdline.generate(parameters), cmdline.bond_options(parameters))
    found = by_name_or_mac(from_networkd(files, "cmdline"))
    assert found["bond0"]["bond_mode"] == "active-backup"
    assert found["bond0"]["bond_members"] == [
        {"name": "eth0", "mac": None},
        {"name": "eth1", "mac": None},
    ]
    assert found["eth0"]["bond"] == "bond0"
    vlan = found["bond0.100"]
    assert vlan["vlan_id"] == 100 and vlan["vlan_parent"] == {"name": "bond0", "mac": None}
    assert sorted(vlan["addresses"]) == ["192.0.2.20/24", "2001:db8::20/64"]


def test_write_is_atomic_and_read_back(tmp_path: Path):
    path = tmp_path / "run/tacet" / record.RECORD_NAME
    made = from_networkd(rendered("ironic-static-ipv4"), "network_data")
    record.write(made, path)
    assert json.loads(path.read_text()) == made
    assert [p.name for p in path.parent.iterdir()] == [record.RECORD_NAME]  # no temporary left
    configured = read(path)
    assert configured is not None and configured.source == "network_data"
    assert configured.static == (ipaddress.ip_interface("192.168.122.42/24"),)
    assert record.record_file(path.parent) == path
    assert record.record_file(DEFAULT_STATE_DIR) == Path("/run/tacet/network.json")


def test_no_record_and_an_empty_one(tmp_path: Path):
    assert read(tmp_path / "absent.json") is None
    assert parse(json.dumps(unconfigured("dhcp"))).static == ()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not JSON"),
        ('{"version": 2, "source": "dhcp", "interfaces": []}', "not a version 1"),
        ('{"version": 1, "source": "guess", "interfaces": []}', "no source"),
        ('{"version": 1, "source": "dhcp", "interfaces": [{}]}', "interfaces[0].addresses"),
        (
            '{"version": 1, "source": "dhcp", "interfaces": [{"addresses": ["eth0"]}]}',
            "'eth0' is not an address/prefix",
        ),
    ],
)
def test_a_broken_record_is_named(tmp_path: Path, text: str, problem: str):
    path = tmp_path / "network.json"
    path.write_text(text)
    with pytest.raises(RecordError) as caught:
        read(path)
    assert problem in str(caught.value) and str(path) in str(caught.value)


def test_another_netdev_kind_is_named_as_networkd_names_it():
    files = cmdline.generate(
        ["bridge=br0:eth0", "ip=192.0.2.40::192.0.2.1:255.255.255.0::br0:none"]
    )
    found = by_name_or_mac(from_networkd(files, "cmdline"))
    assert found["br0"]["kind"] == "bridge"
    assert found["br0"]["addresses"] == ["192.0.2.40/24"]
    assert found["eth0"]["kind"] == "ethernet"
