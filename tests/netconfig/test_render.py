"""agent.netconfig.render: network_data.json -> systemd-networkd files, against golden files.

Each fixture directory under tests/fixtures/network_data/ holds a network_data.json and
the exact files expected for it under expected/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.netconfig.render import NO_NETWORK, interface_names, render
from wire.network_data import parse

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "network_data"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "network_data.json").is_file())


def test_every_case_has_expected_files():
    assert len(CASES) >= 6
    for case in CASES:
        assert list((FIXTURES / case / "expected").iterdir()), case


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str):
    data = parse((FIXTURES / case / "network_data.json").read_text())
    expected = {p.name: p.read_text() for p in (FIXTURES / case / "expected").iterdir()}
    assert render(data) == expected


def test_bond_members_are_matched_by_permanent_mac_and_enslaved():
    files = render(parse((FIXTURES / "bond-802.3ad-vlan" / "network_data.json").read_text()))
    member = files["10-tacet-a0369f3247d9.network"]
    assert "PermanentMACAddress=a0:36:9f:32:47:d9" in member
    assert "Bond=bond0" in member
    assert "\nAddress=" not in member and "DHCP=" not in member
    netdev = files["10-tacet-bond0.netdev"]
    assert "Kind=bond" in netdev and "Mode=802.3ad" in netdev
    assert "TransmitHashPolicy=layer3+4" in netdev and "MIIMonitorSec=100ms" in netdev


def test_static_ipv6_turns_router_advertisements_off_and_slaac_on():
    static = render(parse((FIXTURES / "ipv6-only-static" / "network_data.json").read_text()))
    (text,) = static.values()
    assert "IPv6AcceptRA=no" in text and "DHCP=no" in text
    slaac = render(parse((FIXTURES / "ipv6-only-slaac" / "network_data.json").read_text()))
    assert "IPv6AcceptRA=yes" in slaac["10-tacet-fa163e6b2a1c.network"]


def test_names_of_created_interfaces():
    text = json.dumps(
        {
            "links": [
                {"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:00:00:01"},
                {"id": "a-very-long-vlan-name", "type": "vlan", "vlan_id": 7, "vlan_link": "eth0"},
                {"id": "vlan7", "type": "vlan", "vlan_id": 8, "vlan_link": "eth0"},
                {"id": "x/y", "type": "vlan", "vlan_id": 7, "vlan_link": "eth0"},
            ],
            "networks": [],
        }
    )
    # "vlan7" is another link's id: the generated names step around it.
    assert interface_names(parse(text)) == {
        "a-very-long-vlan-name": "vlan7-1",
        "vlan7": "vlan7",
        "x/y": "vlan7-2",
    }


def test_the_refusal_file_matches_what_the_dhcp_file_matches():
    wired = (
        Path(__file__).resolve().parents[2]
        / "dib-elements/tacet-ramdisk/static/etc/systemd/network/80-tacet-wired.network"
    ).read_text()
    match = wired.split("[Match]\n", 1)[1].split("\n\n", 1)[0]
    assert f"[Match]\n{match}\n" in NO_NETWORK
    assert "Unmanaged=yes" in NO_NETWORK
