"""PCI devices in the shape of IPA's ``pci-devices`` collector, from a built sysfs tree."""

from __future__ import annotations

from hardware.pci import hex_id, pci_devices

NIC = "bus/pci/devices/0000:00:03.0"
GPU = "bus/pci/devices/0000:3b:00.0"
BROKEN = "bus/pci/devices/0000:00:1f.3"


def test_devices_with_ids_revision_and_numa_node(tree):
    root = tree(
        {
            f"{NIC}/vendor": "0x1af4\n",
            f"{NIC}/device": "0x1000\n",
            f"{NIC}/class": "0x020000\n",
            f"{NIC}/numa_node": "-1\n",
            f"{GPU}/vendor": "0x10DE\n",
            f"{GPU}/device": "0x1eb8\n",
            f"{GPU}/class": "0x030200\n",
            f"{GPU}/revision": "0xa1\n",
            f"{GPU}/numa_node": "1\n",
            f"{BROKEN}/vendor": "0x8086\n",  # no device id: skipped, as IPA does
            f"{BROKEN}/class": "0x0c0500\n",
        }
    )
    assert pci_devices(root) == [
        {
            "vendor_id": "1af4",
            "product_id": "1000",
            "class": "020000",
            "revision": None,
            "bus": "0000:00:03.0",
            "numa_node_id": "-1",
        },
        {
            "vendor_id": "10de",
            "product_id": "1eb8",
            "class": "030200",
            "revision": "a1",
            "bus": "0000:3b:00.0",
            "numa_node_id": "1",
        },
    ]


def test_no_pci_bus_is_an_empty_list(tmp_path):
    assert pci_devices(tmp_path) == []


def test_hex_id():
    assert hex_id("0x8086") == "8086"
    assert hex_id("8086") is None
    assert hex_id("0x") is None
    assert hex_id("0xzz") is None
    assert hex_id(None) is None
