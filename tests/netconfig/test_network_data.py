"""wire.network_data: network_data.json (ironic's config-drive format) into dataclasses."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from wire.network_data import (
    BondLink,
    DynamicNetwork,
    NetworkDataError,
    PhysicalLink,
    Route,
    StaticNetwork,
    VlanLink,
    parse,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "network_data"
MAC = "52:54:00:12:34:56"


def document(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": MAC}],
        "networks": [],
        "services": [],
    }
    base.update(overrides)
    return base


def test_ironics_documented_example():
    data = parse((FIXTURES / "ironic-static-ipv4" / "network_data.json").read_text())
    link_id = "port-92750f6c-60a9-4897-9cd1-090c5f361e18"
    assert data.links == (PhysicalLink(link_id, "52:54:00:d3:6a:71"),)
    assert data.networks == (
        StaticNetwork("network0", link_id, ipaddress.ip_interface("192.168.122.42/24")),
    )
    assert data.dns == ()
    assert data.warnings == ()


def test_bond_with_vlans():
    data = parse((FIXTURES / "bond-802.3ad-vlan" / "network_data.json").read_text())
    bond = data.link("bond0")
    assert bond == BondLink(
        "bond0",
        "802.3ad",
        ("port-eno1", "port-eno2"),
        mac="a0:36:9f:32:47:d8",
        mtu=9000,
        miimon_ms=100,
        xmit_hash_policy="layer3+4",
        lacp_rate="fast",
    )
    vlan = data.link("provisioning-vlan-401-on-bond0")
    assert vlan == VlanLink(vlan.id, 401, "bond0", "a0:36:9f:32:47:d8", None)
    network = data.networks[1]
    assert isinstance(network, StaticNetwork)
    assert network.interface == ipaddress.ip_interface("10.176.12.19/19")
    assert network.routes[1] == Route(
        ipaddress.ip_network("10.208.0.0/12"), ipaddress.ip_address("10.176.0.1")
    )
    assert [str(a) for a in data.dns] == ["192.0.2.53", "192.0.2.54"]


def test_ipv6_netmask_forms_and_route_prefix_as_number():
    data = parse((FIXTURES / "static-dual-stack" / "network_data.json").read_text())
    v6 = data.networks[1]
    assert isinstance(v6, StaticNetwork)
    assert v6.interface == ipaddress.ip_interface("2001:db8:30::41/64")
    assert v6.routes[0].is_default
    assert str(v6.routes[0].gateway) == "fe80::1"
    # upper-case MAC from nova normalised
    assert data.links[0] == PhysicalLink("tapcd9f6d46-4a", "fa:16:3e:9c:bf:3d", 9000)
    only6 = parse((FIXTURES / "ipv6-only-static" / "network_data.json").read_text())
    network = only6.networks[0]
    assert isinstance(network, StaticNetwork)
    assert network.interface == ipaddress.ip_interface("2001:db8:100::42/64")
    assert network.routes[1].destination == ipaddress.ip_network("2001:db8:200::/48")


def test_dynamic_types_including_neutrons_dhcpv6_modes():
    data = parse((FIXTURES / "ipv6-only-slaac" / "network_data.json").read_text())
    assert data.networks == (
        DynamicNetwork("network0", "tap6b2a1c7e-01", "ipv6_slaac"),
        DynamicNetwork("network1", "tap6b2a1c7e-02", "ipv6_dhcp"),
    )


def test_unsupported_keys_and_types_are_warnings_not_silence():
    text = json.dumps(
        document(
            links=[
                {"id": "eth0", "type": "phy", "ethernet_mac_address": MAC, "speed": 25000},
                {"id": "ib0", "type": "infiniband", "ethernet_mac_address": MAC},
            ],
            networks=[
                {"id": "n0", "link": "eth0", "type": "ipv4_dhcp", "network_id": "x"},
                {"id": "n1", "link": "eth0", "type": "ipv6_ra_only", "network_id": "y"},
                {
                    "id": "n2",
                    "link": "eth0",
                    "type": "ipv4",
                    "ip_address": "192.0.2.4",
                    "netmask": "255.255.255.0",
                    "dns_search": ["example.org"],
                    "routes": [
                        {
                            "network": "0.0.0.0",
                            "netmask": "0.0.0.0",
                            "gateway": "192.0.2.1",
                            "metric": 5,
                        }
                    ],
                },
            ],
            services=[{"type": "ntp", "address": "192.0.2.123"}],
            extra={"anything": 1},
        )
    )
    data = parse(text)
    assert data.warnings == (
        "extra: not supported, ignored",
        "links[0].speed: not supported, ignored",
        "links[1].type: link type 'infiniband' not supported, link ignored",
        "networks[1].type: network type 'ipv6_ra_only' not supported, ignored",
        "networks[2].dns_search: not supported, ignored",
        "networks[2].routes[0].metric: not supported, ignored",
        "services[0].type: service 'ntp' not supported, ignored",
    )
    assert [link.id for link in data.links] == ["eth0"]
    assert [n.id for n in data.networks] == ["n0", "n2"]


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("truncated.json", "not JSON (Expecting value: line 2 column 1 (char 12))"),
        ("not-an-object.json", "the top level is not a JSON object"),
        ("bad-mac.json", "links[0].ethernet_mac_address: '52:54:00:12:34:5' is not a MAC address"),
        ("bad-gateway.json", "networks[1].routes[0].gateway: not an IP address"),
        ("unknown-vlan-parent.json", "links[1].vlan_link: no link 'eth1'"),
        ("vlan-id-out-of-range.json", "links[1].vlan_id: 5000 is outside 1..4094"),
        ("mixed-family.json", "networks[0].ip_address: not an IPv6 address"),
        (
            "bad-bond-mode.json",
            "links[1].bond_mode: 'lacp' is not one of 802.3ad, active-backup, balance-alb,"
            " balance-rr, balance-tlb, balance-xor, broadcast",
        ),
    ],
)
def test_malformed_files_name_the_place(fixture: str, message: str):
    with pytest.raises(NetworkDataError) as caught:
        parse((FIXTURES / "malformed" / fixture).read_text())
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"links": None}, "links: missing"),
        ({"links": {}}, "links: not a list"),
        ({"networks": [{"link": "eth0", "type": "ipv4"}]}, "networks[0].ip_address: missing"),
        (
            {"networks": [{"link": "eth9", "type": "ipv4_dhcp"}]},
            "networks[0].link: no link 'eth9'",
        ),
        (
            {
                "networks": [
                    {
                        "link": "eth0",
                        "type": "ipv4",
                        "ip_address": "192.0.2.1",
                        "netmask": "255.0.255.0",
                    }
                ]
            },
            "networks[0].netmask: '255.0.255.0' is not a netmask (its ones are not contiguous)",
        ),
        (
            {"networks": [{"link": "eth0", "type": "ipv6", "ip_address": "2001:db8::1"}]},
            "networks[0].netmask: missing (and ip_address has no /prefix)",
        ),
        (
            {
                "networks": [
                    {
                        "link": "eth0",
                        "type": "ipv4",
                        "ip_address": "192.0.2.1/24",
                        "netmask": "255.255.0.0",
                    }
                ]
            },
            "networks[0].netmask: disagrees with the prefix of ip_address",
        ),
        (
            {
                "networks": [
                    {
                        "link": "eth0",
                        "type": "ipv4",
                        "ip_address": "192.0.2.1/24",
                        "routes": [{"network": "10.0.0.1", "netmask": "8", "gateway": "192.0.2.9"}],
                    }
                ]
            },
            "networks[0].routes[0].network: 10.0.0.1 has host bits set for /8",
        ),
        (
            {
                "networks": [
                    {
                        "link": "eth0",
                        "type": "ipv4",
                        "ip_address": "192.0.2.1/24",
                        "routes": [{"network": "::", "netmask": "::", "gateway": "fe80::1"}],
                    }
                ]
            },
            "networks[0].routes[0].network: not an IPv4 address",
        ),
        (
            {"services": [{"type": "dns", "address": "dns.example"}]},
            "services[0].address: not an IP address",
        ),
        (
            {"links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": MAC, "mtu": True}]},
            "links[0].mtu: not an integer",
        ),
        (
            {
                "links": [
                    {"id": "eth0", "type": "phy", "ethernet_mac_address": MAC},
                    {"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:12:34:57"},
                ]
            },
            "links[1].id: duplicate link id 'eth0'",
        ),
        (
            {
                "links": [
                    {"id": "eth0", "type": "phy", "ethernet_mac_address": MAC},
                    {"id": "eth1", "type": "phy", "ethernet_mac_address": MAC.upper()},
                ]
            },
            f"links[1].ethernet_mac_address: {MAC} is also 'eth0''s",
        ),
        (
            {
                "links": [
                    {"id": "eth0", "type": "phy", "ethernet_mac_address": MAC},
                    {
                        "id": "bond0",
                        "type": "bond",
                        "bond_mode": "active-backup",
                        "bond_links": ["eth0"],
                    },
                ],
                "networks": [{"link": "eth0", "type": "ipv4_dhcp"}],
            },
            "networks[0].link: 'eth0' is a bond member",
        ),
        (
            {
                "links": [
                    {"id": "eth0", "type": "phy", "ethernet_mac_address": MAC},
                    {"id": "v1", "type": "vlan", "vlan_id": 1, "vlan_link": "eth0"},
                    {"id": "bond0", "type": "bond", "bond_mode": "802.3ad", "bond_links": ["v1"]},
                ]
            },
            "links[2].bond_links[0]: 'v1' is not a physical link",
        ),
        (
            {
                "links": [
                    {"id": "eth0", "type": "phy", "ethernet_mac_address": MAC},
                    {"id": "bond0", "type": "bond", "bond_mode": "802.3ad", "bond_links": ["eth0"]},
                    {"id": "bond1", "type": "bond", "bond_mode": "802.3ad", "bond_links": ["eth0"]},
                ]
            },
            "links[2].bond_links[0]: 'eth0' is already in 'bond0'",
        ),
        (
            {
                "links": [
                    {"id": "eth0", "type": "phy", "ethernet_mac_address": MAC},
                    {
                        "id": "bond0",
                        "type": "bond",
                        "bond_mode": "802.3ad",
                        "bond_links": ["eth0"],
                        "bond_xmit_hash_policy": "layer5",
                    },
                ]
            },
            "links[1].bond_xmit_hash_policy: 'layer5' is not one of encap2+3, encap3+4, layer2,"
            " layer2+3, layer3+4, vlan+srcmac",
        ),
    ],
)
def test_malformed_documents(overrides: dict[str, Any], message: str):
    with pytest.raises(NetworkDataError) as caught:
        parse(json.dumps(document(**overrides)))
    assert str(caught.value) == message


def test_numbers_quoted_as_strings_are_accepted():
    data = parse(
        json.dumps(
            document(
                links=[
                    {"id": "eth0", "type": "phy", "ethernet_mac_address": MAC, "mtu": "9000"},
                    {"id": "v", "type": "vlan", "vlan_id": "42", "vlan_link": "eth0"},
                ]
            )
        )
    )
    assert data.links == (PhysicalLink("eth0", MAC, 9000), VlanLink("v", 42, "eth0"))


def test_oversized_input_is_refused_before_parsing():
    with pytest.raises(NetworkDataError, match="larger than"):
        parse(" " * (1024 * 1024 + 1))
