"""The live inventory of the machine running the tests, cross-checked against other tools."""

import os
import socket
from pathlib import Path

import psutil
import pytest

from hardware import collect_inventory, live_sources

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def inventory():
    return collect_inventory(live_sources())


def test_no_collector_failed(inventory):
    assert inventory.collection_errors == {}


def test_memory_and_cpu_match_psutil(inventory):
    assert inventory.memory.total == psutil.virtual_memory().total
    assert inventory.cpu.count == psutil.cpu_count(logical=True)
    assert inventory.hostname == socket.gethostname()


def test_interface_macs_match_the_kernel(inventory):
    packet_macs = {
        name: next((a.address for a in addrs if a.family == psutil.AF_LINK), None)
        for name, addrs in psutil.net_if_addrs().items()
    }
    for nic in inventory.interfaces:
        assert Path("/sys/class/net", nic.name).exists()
        assert nic.name != "lo"
        # permanent MAC may differ from the current one only on bond members
        if not Path("/sys/class/net", nic.name, "master").exists():
            assert nic.mac_address == packet_macs[nic.name].lower()


def test_disk_sizes_match_proc_partitions(inventory):
    blocks = {}
    for line in Path("/proc/partitions").read_text().splitlines()[2:]:
        _major, _minor, kib, name = line.split()
        blocks["/dev/" + name] = int(kib) * 1024
    for disk in inventory.disks:
        assert disk.size == blocks[disk.name]
        assert not os.path.basename(disk.name).startswith(("loop", "zram", "ram", "sr"))
