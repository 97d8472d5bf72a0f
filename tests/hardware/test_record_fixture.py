import json

from hardware.inventory import collect_inventory
from hardware.record_fixture import Recorder, main, scrub
from hardware.sources import fixture_sources
from tests.conftest import Link, build_tree

VDA = "devices/pci0000:00/0000:00:05.0/virtio1/block/vda"
NIC = "devices/pci0000:00/0000:00:03.0/virtio0/net/ens3"


def fake_machine(root):
    return build_tree(
        root,
        {
            "sys/class/block/vda": Link(f"../../{VDA}"),
            "sys/block/vda": Link(f"../{VDA}"),
            f"sys/{VDA}/uevent": "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
            f"sys/{VDA}/size": "16777216\n",
            f"sys/{VDA}/serial": "TCVIRTIO0001",
            f"sys/{VDA}/queue/rotational": "1\n",
            f"sys/{VDA}/holders": None,
            f"sys/{VDA}/device": Link("../../../virtio1"),
            "sys/class/net/ens3": Link(f"../../{NIC}"),
            f"sys/{NIC}/address": "52:54:00:7a:c0:01\n",
            f"sys/{NIC}/type": "1\n",
            f"sys/{NIC}/carrier": "1\n",
            f"sys/{NIC}/device": Link("../../../virtio0"),
            "sys/devices/pci0000:00/0000:00:03.0/vendor": "0x1af4\n",
            "sys/devices/pci0000:00/0000:00:03.0/device": "0x1000\n",
            "sys/devices/pci0000:00/0000:00:03.0/virtio0/driver": Link(
                "../../../../bus/virtio/drivers/virtio_net"
            ),
            "sys/class/dmi/id": Link("../../devices/virtual/dmi/id"),
            "sys/devices/virtual/dmi/id/sys_vendor": "Tacet Labs\n",
            "sys/devices/virtual/dmi/id/product_serial": "SYS-VIRTIO-0001\n",
            "sys/devices/virtual/dmi/id/product_uuid": "7ac0d5a4-0b1e-4a36-9b3e-1d2c3b4a5f60\n",
            "sys/firmware/dmi/entries/17-0/raw": bytes([17, 0x28])
            + bytes(10)
            + b"\x00\x04"
            + bytes(0x28 - 14),
            "sys/firmware/efi/fw_platform_size": "64\n",
            "sys/devices/system/cpu/online": "0-1\n",
            "proc/cpuinfo": "processor\t: 0\nmodel name\t: Test CPU\n\nprocessor\t: 1\n"
            "model name\t: Test CPU\n",
            "proc/meminfo": "MemTotal: 1024 kB\n",
            "proc/cmdline": "BOOTIF=01-52-54-00-7a-c0-01 quiet\n",
        },
    )


def test_recording_replays_to_the_same_facts(tmp_path):
    machine = fake_machine(tmp_path / "machine")
    out = tmp_path / "fixture"
    Recorder(out, machine / "sys", machine / "proc").record()
    inventory = collect_inventory(fixture_sources(out))
    [vda] = inventory.disks
    assert (vda.name, vda.serial, vda.size, vda.rotational) == (
        "/dev/vda",
        "TCVIRTIO0001",
        16777216 * 512,
        True,
    )
    [nic] = inventory.interfaces
    assert (nic.name, nic.vendor, nic.product, nic.driver, nic.has_carrier) == (
        "ens3",
        "0x1af4",
        "0x1000",
        "virtio_net",
        True,
    )
    assert inventory.system_vendor.manufacturer == "Tacet Labs"
    assert inventory.system_vendor.serial_number == "SYS-VIRTIO-0001"
    assert inventory.memory.physical_mb == 1024
    assert inventory.memory.total == 1024 * 1024
    assert inventory.boot.current_boot_mode == "uefi"
    assert inventory.boot.pxe_interface == "52:54:00:7a:c0:01"
    assert inventory.cpu.model_name == "Test CPU"
    assert (out / "host.json").exists()
    # symlinks are recorded as symlinks, not copies of whole subtrees
    assert (out / "sys" / "class" / "net" / "ens3").is_symlink()


def test_scrub_replaces_macs_and_serials_consistently(tmp_path):
    machine = fake_machine(tmp_path / "machine")
    out = tmp_path / "fixture"
    Recorder(out, machine / "sys", machine / "proc").record()
    scrub(out)
    texts = "".join(
        p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file() and not p.is_symlink()
    )
    for secret in (
        "52:54:00:7a:c0:01",
        "52-54-00-7a-c0-01",
        "TCVIRTIO0001",
        "SYS-VIRTIO-0001",
        "7ac0d5a4-0b1e-4a36-9b3e-1d2c3b4a5f60",
    ):
        assert secret not in texts
    inventory = collect_inventory(fixture_sources(out))
    # the same MAC was replaced by the same fake value in sysfs and on the command line
    assert inventory.interfaces[0].mac_address == inventory.boot.pxe_interface
    assert inventory.disks[0].serial.startswith("SCRUBBED")


def test_cli_refuses_a_non_empty_directory(tmp_path, capsys):
    (tmp_path / "x").write_text("")
    try:
        main([str(tmp_path)])
    except SystemExit as exc:
        assert exc.code == 2
    assert "not empty" in capsys.readouterr().err


def test_host_json_is_written(tmp_path):
    machine = fake_machine(tmp_path / "machine")
    Recorder(tmp_path / "fx", machine / "sys", machine / "proc").record()
    host = json.loads((tmp_path / "fx" / "host.json").read_text())
    assert {"hostname", "machine", "cpu_count", "ipmi_devices"} <= set(host)


def bonded_machine(root):
    """Two NICs in bond0 and a VLAN bond0.100 on it, as sysfs and /proc show them."""
    spec: dict = {"sys/class/net/bond0": Link("../../devices/virtual/net/bond0")}
    for slot, name in (("0000:00:08.0", "enp9s0"), ("0000:00:09.0", "enp9s1")):
        base = f"devices/pci0000:00/{slot}/net/{name}"
        spec |= {
            f"sys/class/net/{name}": Link(f"../../{base}"),
            f"sys/{base}/address": "02:00:00:00:00:09\n",
            f"sys/{base}/type": "1\n",
            f"sys/{base}/device": Link(f"../../../{slot}"),
            f"sys/{base}/master": Link("../../../../virtual/net/bond0"),
            f"sys/{base}/bonding_slave/perm_hwaddr": f"02:00:00:00:00:{slot[-3]}{slot[-3]}\n",
        }
    spec |= {
        "sys/devices/virtual/net/bond0/type": "1\n",
        "sys/devices/virtual/net/bond0/uevent": "DEVTYPE=bond\nINTERFACE=bond0\n",
        "sys/devices/virtual/net/bond0/ifindex": "4\n",
        "sys/devices/virtual/net/bond0/bonding/mode": "balance-alb 6\n",
        "sys/devices/virtual/net/bond0/bonding/slaves": "enp9s0 enp9s1\n",
        "sys/class/net/bond0.100": Link("../../devices/virtual/net/bond0.100"),
        "sys/devices/virtual/net/bond0.100/type": "1\n",
        "sys/devices/virtual/net/bond0.100/uevent": "DEVTYPE=vlan\nINTERFACE=bond0.100\n",
        "sys/devices/virtual/net/bond0.100/iflink": "4\n",
        "proc/net/vlan/config": "VLAN Dev name\t | VLAN ID\n"
        "Name-Type: VLAN_NAME_TYPE_RAW_PLUS_VID_NO_PAD\n"
        "bond0.100      | 100  | bond0\n",
    }
    return build_tree(root, spec)


def test_bonds_and_vlans_are_recorded(tmp_path):
    machine = bonded_machine(tmp_path / "machine")
    out = tmp_path / "fixture"
    Recorder(out, machine / "sys", machine / "proc").record()
    member = out / "sys/devices/pci0000:00/0000:00:08.0/net/enp9s0"
    assert (member / "master").is_symlink()
    assert (member / "bonding_slave/perm_hwaddr").read_text() == "02:00:00:00:00:88\n"
    assert (out / "proc/net/vlan/config").exists()
    found = {i.name: i for i in collect_inventory(fixture_sources(out)).interfaces}
    assert found["bond0"].bond_mode == "balance-alb"
    assert [(m.name, m.mac_address) for m in found["bond0"].bond_members] == [
        ("enp9s0", "02:00:00:00:00:88"),
        ("enp9s1", "02:00:00:00:00:99"),
    ]
    assert found["enp9s1"].bond_master == "bond0"
    assert (found["bond0.100"].vlan_id, found["bond0.100"].vlan_parent) == (100, "bond0")
