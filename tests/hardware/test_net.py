import json

import pytest

from hardware.model import BondMember, InterfaceAddress
from hardware.net import (
    Addresses,
    InterfaceCollector,
    Vlan,
    choose_ipv6,
    parse_bond_mode,
    parse_ip_json,
    parse_speed,
    parse_vlan_config,
    prefix_of,
)
from hardware.sources import RecordedEthtool
from tests.conftest import Link

PCI = "devices/pci0000:00/0000:00:1f.6"
VIRTIO_PCI = "devices/pci0000:00/0000:00:03.0"


def nic(path: str, name: str, **files: str) -> dict:
    base = f"{path}/net/{name}"
    spec = {f"class/net/{name}": Link(f"../../{base}"), f"{base}/type": "1\n"}
    spec.update({f"{base}/{key}": value for key, value in files.items()})
    return spec


@pytest.fixture
def sysfs(tree):
    spec = {}
    # A PCI NIC with link, known speed and a driver.
    spec |= nic(
        PCI,
        "eno1",
        address="aa:bb:cc:00:00:01\n",
        carrier="1\n",
        speed="1000\n",
        uevent="INTERFACE=eno1\nIFINDEX=2\n",
    )
    spec |= {
        f"{PCI}/net/eno1/device": Link("../../../0000:00:1f.6"),
        f"{PCI}/vendor": "0x8086\n",
        f"{PCI}/device": "0x15b7\n",
        f"{PCI}/driver": Link("../../../bus/pci/drivers/e1000e"),
    }
    # A virtio NIC: the netdev's device is the virtio device below the PCI function.
    spec |= nic(
        f"{VIRTIO_PCI}/virtio0",
        "ens3",
        address="52:54:00:00:00:02\n",
        carrier="0\n",
        speed="-1\n",
        uevent="INTERFACE=ens3\n",
    )
    spec |= {
        f"{VIRTIO_PCI}/virtio0/net/ens3/device": Link("../../../virtio0"),
        f"{VIRTIO_PCI}/virtio0/driver": Link("../../../../bus/virtio/drivers/virtio_net"),
        f"{VIRTIO_PCI}/vendor": "0x1af4\n",
        f"{VIRTIO_PCI}/device": "0x1000\n",
    }
    # Virtual devices: kept (VLAN, bond) and skipped (bridge, veth, tun, dummy, lo).
    virtual = "devices/virtual"
    spec |= nic(
        virtual,
        "eno1.42",
        address="aa:bb:cc:00:00:01\n",
        carrier="1\n",
        uevent="DEVTYPE=vlan\nINTERFACE=eno1.42\n",
    )
    spec |= nic(
        virtual,
        "bond0",
        address="aa:bb:cc:00:00:09\n",
        uevent="DEVTYPE=bond\n",
        **{"bonding/mode": "active-backup 1\n"},
    )
    spec |= nic(virtual, "br0", address="aa:bb:cc:00:00:0a\n", uevent="DEVTYPE=bridge\n")
    spec |= nic(virtual, "veth0", address="aa:bb:cc:00:00:0b\n", uevent="INTERFACE=veth0\n")
    spec |= nic(virtual, "tun0", uevent="INTERFACE=tun0\n", tun_flags="0x1002\n")
    spec[f"{virtual}/net/tun0/type"] = "65534\n"
    spec |= nic(virtual, "lo", address="00:00:00:00:00:00\n")
    spec[f"{virtual}/net/lo/type"] = "772\n"
    return tree(spec)


IP_JSON = json.dumps(
    [
        {
            "ifname": "eno1",
            "addr_info": [
                {"family": "inet", "local": "192.0.2.10"},
                {"family": "inet6", "local": "fe80::a8bb:ccff:fe00:1"},
                {"family": "inet6", "local": "2001:db8::10"},
            ],
        },
        {
            "ifname": "ens3",
            "addr_info": [
                {"family": "inet6", "local": "fe80::5054:ff:fe00:2"},
            ],
        },
        {"ifname": "bond0", "addr_info": []},
    ]
)


def collect(root, ethtool=None):
    ethtool = ethtool or RecordedEthtool(
        {
            "eno1": {"permaddr": "AA:BB:CC:00:00:FF", "driver": "e1000e"},
            "bond0": {"permaddr": None, "driver": "bonding"},
            "eno1.42": {"permaddr": None, "driver": "802.1Q VLAN Support"},
        }
    )
    interfaces = InterfaceCollector(root, lambda: parse_ip_json(IP_JSON), ethtool).collect()
    return {i.name: i for i in interfaces}


def test_only_physical_vlan_and_bond_are_reported(sysfs):
    assert sorted(collect(sysfs)) == ["bond0", "eno1", "eno1.42", "ens3"]


def test_pci_nic(sysfs):
    eno1 = collect(sysfs)["eno1"]
    assert eno1.mac_address == "aa:bb:cc:00:00:ff"  # permanent address wins
    assert eno1.ipv4_address == "192.0.2.10"
    assert eno1.ipv6_address == "2001:db8::10"  # global preferred over link-local
    assert eno1.has_carrier is True
    assert eno1.speed_mbps == 1000
    assert (eno1.vendor, eno1.product, eno1.pci_address) == ("0x8086", "0x15b7", "0000:00:1f.6")
    assert eno1.driver == "e1000e"
    assert (eno1.lldp, eno1.client_id, eno1.biosdevname) == (None, None, None)


def test_virtio_nic_without_carrier_ipv6_only(sysfs):
    ens3 = collect(sysfs)["ens3"]
    assert ens3.mac_address == "52:54:00:00:00:02"  # no permanent address: current one
    assert ens3.ipv4_address is None
    assert ens3.ipv6_address == "fe80::5054:ff:fe00:2"
    assert ens3.has_carrier is False
    assert ens3.speed_mbps is None  # -1 means unknown
    assert (ens3.vendor, ens3.product, ens3.pci_address) == ("0x1af4", "0x1000", "0000:00:03.0")
    assert ens3.driver == "virtio_net"


def test_virtual_interfaces(sysfs):
    found = collect(sysfs)
    bond = found["bond0"]
    assert bond.driver == "bonding"  # from ethtool: no device link
    assert (bond.pci_address, bond.vendor) == (None, None)
    assert bond.has_carrier is None  # unreadable carrier is unknown, not false
    assert found["eno1.42"].mac_address == "aa:bb:cc:00:00:01"


def test_no_interfaces_directory(tmp_path):
    assert InterfaceCollector(tmp_path, dict, RecordedEthtool({})).collect() == []


@pytest.mark.parametrize(
    ("text", "speed"),
    [
        ("1000\n", 1000),
        ("-1\n", None),
        ("4294967295", None),
        ("", None),
        (None, None),
        ("25000", 25000),
        ("fast", None),
    ],
)
def test_speed(text, speed):
    assert parse_speed(text) == speed


def test_choose_ipv6():
    assert choose_ipv6(("fe80::1%eth0", "2001:db8::1")) == "2001:db8::1"
    assert choose_ipv6(("fe80::1%eth0",)) == "fe80::1"
    assert choose_ipv6(("bogus",)) is None
    assert choose_ipv6(()) is None


def test_parse_ip_json_tolerates_garbage():
    assert parse_ip_json("not json") == {}
    assert parse_ip_json('[{"addr_info": []}]') == {}


# -- how interfaces are tied together: bonds, members, VLANs ------------------------------

BOND = "devices/virtual/net/bond0"
VLAN_CONFIG = (
    "VLAN Dev name\t | VLAN ID\n"
    "Name-Type: VLAN_NAME_TYPE_RAW_PLUS_VID_NO_PAD\n"
    "bond0.100      | 100  | bond0\n"
)


@pytest.fixture
def bonded(tree):
    """eno1 and eno2 in bond0 (eno2 without ethtool data), a VLAN bond0.100 on top."""
    spec = {}
    for index, name in ((2, "eno1"), (3, "eno2")):
        pci = f"devices/pci0000:00/0000:00:0{index}.0"
        spec |= nic(
            pci,
            name,
            address="aa:bb:cc:00:00:09\n",  # the bond's, as in active-backup
            ifindex=f"{index}\n",
            **{"bonding_slave/perm_hwaddr": f"aa:bb:cc:00:00:0{index}\n"},
        )
        spec[f"{pci}/net/{name}/device"] = Link(f"../../../0000:00:0{index}.0")
    spec["devices/pci0000:00/0000:00:02.0/net/eno1/master"] = Link("../../../../virtual/net/bond0")
    spec |= nic(
        "devices/virtual",
        "bond0",
        address="aa:bb:cc:00:00:09\n",
        ifindex="4\n",
        uevent="DEVTYPE=bond\n",
        **{"bonding/mode": "802.3ad 4\n", "bonding/slaves": "eno1 eno2\n"},
    )
    spec |= nic(
        "devices/virtual",
        "bond0.100",
        address="aa:bb:cc:00:00:09\n",
        ifindex="5\n",
        iflink="4\n",
        uevent="DEVTYPE=vlan\nINTERFACE=bond0.100\n",
    )
    return tree(spec)


def collect_bonded(root, procfs=None):
    ethtool = RecordedEthtool({"eno1": {"permaddr": "aa:bb:cc:00:00:ff", "driver": "e1000e"}})
    addresses = {
        "bond0.100": Addresses(
            ("192.0.2.10",), ("2001:db8::10",), (("192.0.2.10", 24), ("2001:db8::10", None))
        ),
        "bond0": Addresses(),
    }
    found = InterfaceCollector(root, lambda: addresses, ethtool, procfs=procfs).collect()
    return {i.name: i for i in found}


def test_a_bond_its_members_and_a_vlan_on_it(bonded, tmp_path):
    procfs = tmp_path / "proc"
    (procfs / "net/vlan").mkdir(parents=True)
    (procfs / "net/vlan/config").write_text(VLAN_CONFIG)
    found = collect_bonded(bonded, procfs)
    bond = found["bond0"]
    assert (bond.kind, bond.bond_mode) == ("bond", "802.3ad")
    assert bond.bond_members == [
        BondMember("eno1", "aa:bb:cc:00:00:ff"),  # ethtool's permanent address first
        BondMember("eno2", "aa:bb:cc:00:00:03"),  # else the bonding driver's record of it
    ]
    assert found["eno2"].mac_address == "aa:bb:cc:00:00:03"
    assert found["eno1"].bond_master == found["eno2"].bond_master == "bond0"
    assert (found["eno1"].kind, found["eno1"].vlan_id, found["eno1"].bond_mode) == (
        "physical",
        None,
        None,
    )
    vlan = found["bond0.100"]
    assert (vlan.kind, vlan.vlan_id, vlan.vlan_parent, vlan.bond_master) == (
        "vlan",
        100,
        "bond0",
        None,
    )
    assert vlan.ip_addresses == [
        InterfaceAddress("192.0.2.10", 24),
        InterfaceAddress("2001:db8::10", None),  # the source gave no prefix: not invented
    ]
    assert bond.ip_addresses == []  # known to have none
    assert found["eno1"].ip_addresses is None  # the address source did not list it


def test_without_proc_net_vlan_the_id_is_unknown_and_the_parent_comes_from_iflink(bonded):
    vlan = collect_bonded(bonded)["bond0.100"]
    assert (vlan.vlan_id, vlan.vlan_parent) == (None, "bond0")


def test_a_bond_whose_slaves_cannot_be_read(tree):
    root = tree(nic("devices/virtual", "bond1", uevent="DEVTYPE=bond\n"))
    bond = InterfaceCollector(root, dict, RecordedEthtool({})).collect()[0]
    assert (bond.kind, bond.bond_mode, bond.bond_members) == ("bond", None, None)


def test_parse_vlan_config():
    assert parse_vlan_config(VLAN_CONFIG + "eth0.7         | 7  | eth0\n") == {
        "bond0.100": Vlan(100, "bond0"),
        "eth0.7": Vlan(7, "eth0"),
    }
    assert parse_vlan_config(None) == {} and parse_vlan_config("garbage | x | y") == {}


def test_parse_bond_mode():
    assert parse_bond_mode("active-backup 1\n") == "active-backup"
    assert parse_bond_mode("") is None and parse_bond_mode(None) is None


@pytest.mark.parametrize(
    ("netmask", "prefix"),
    [
        ("255.255.255.0", 24),
        ("255.255.254.0", 23),
        ("ffff:ffff:ffff:ffff::/64", 64),
        ("ffff:ffff:ffff:ff00::", 56),
        ("255.0.255.0", None),
        ("", None),
        (None, None),
        ("bogus", None),
    ],
)
def test_prefix_of_a_netifaces_netmask(netmask, prefix):
    assert prefix_of(netmask) == prefix


def test_ip_json_keeps_prefixes():
    text = IP_JSON.replace('"local": "192.0.2.10"', '"local": "192.0.2.10", "prefixlen": 26')
    parsed = parse_ip_json(text)
    assert parsed["eno1"].with_prefix[0] == ("192.0.2.10", 26)
    assert parsed["eno1"].with_prefix[1] == ("fe80::a8bb:ccff:fe00:1", None)
