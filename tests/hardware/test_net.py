import json

import pytest

from hardware.net import InterfaceCollector, choose_ipv6, parse_ip_json, parse_speed
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
