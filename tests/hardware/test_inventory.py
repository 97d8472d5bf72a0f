import json
import threading
from dataclasses import replace

from hardware import collect_inventory, fixture_sources
from hardware.model import SCHEMA_VERSION
from tests.conftest import FIXTURES

MICROVM = FIXTURES / "firecracker-microvm"


def test_a_failing_collector_only_nulls_its_part():
    sources = fixture_sources(MICROVM)

    class BrokenUdev:
        def block_devices(self):
            raise OSError("udev exploded")

    inventory = collect_inventory(replace(sources, udev=BrokenUdev()))
    assert inventory.disks is None
    assert inventory.collection_errors == {"disks": "OSError: udev exploded"}
    assert inventory.interfaces  # the rest still came back
    assert inventory.cpu is not None


def test_a_hanging_collector_times_out_without_blocking_the_rest():
    sources = fixture_sources(MICROVM)
    release = threading.Event()

    class HangingAddresses:
        def addresses(self):
            release.wait(5)
            return {}

    try:
        inventory = collect_inventory(
            replace(sources, addresses=HangingAddresses()), timeouts={"interfaces": 0.2}
        )
    finally:
        release.set()
    assert inventory.interfaces is None
    assert inventory.collection_errors == {"interfaces": "timed out after 0.2s"}
    assert inventory.disks


def test_json_shape_has_ipa_keys():
    data = collect_inventory(fixture_sources(MICROVM)).to_dict()
    for key in (
        "interfaces",
        "cpu",
        "disks",
        "memory",
        "bmc_address",
        "bmc_v6address",
        "bmc_mac",
        "system_vendor",
        "boot",
        "hostname",
    ):
        assert key in data
    assert data["tacet_schema_version"] == SCHEMA_VERSION
    assert set(data["system_vendor"]) >= {
        "product_name",
        "serial_number",
        "manufacturer",
        "firmware",
    }
    json.dumps(data)  # serialisable as is


def test_lldp_only_when_asked_and_only_on_physical_nics():
    sources = fixture_sources(FIXTURES / "qemu-virtio")  # ens2 plus the VLAN ens2.42
    asked = []

    def fake_capture(names, timeout):
        asked.append((names, timeout))
        return {"ens2": [[1, "04aabbccddeeff"]]}

    sources = replace(sources, lldp=fake_capture)
    quiet = {i.name: i.lldp for i in collect_inventory(sources).interfaces}
    assert quiet == {"ens2": None, "ens2.42": None}
    assert asked == []
    heard = {i.name: i.lldp for i in collect_inventory(sources, lldp_timeout=2.5).interfaces}
    assert heard == {"ens2": [[1, "04aabbccddeeff"]], "ens2.42": None}
    assert asked == [(["ens2"], 2.5)]
