import pytest

from hardware.disks import DiskCollector, hctl_from_devpath, transport
from hardware.udev import ExportDbSource, SysfsUeventSource, UdevRecord, parse_export_db
from tests.conftest import Link

SDA = "/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda"
NVME = "/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1"
VDA = "/devices/pci0000:00/0000:00:05.0/virtio1/block/vda"

EXPORT_DB = f"""P: {SDA}
M: sda
U: block
T: disk
D: b 8:0
N: sda
L: 0
S: disk/by-id/ata-TACET_SATA_DISK_TCSATA0001
S: disk/by-path/pci-0000:00:1f.2-ata-1
S: disk/by-path/pci-0000:00:1f.2-ata-1.0
E: DEVPATH={SDA}
E: SUBSYSTEM=block
E: DEVNAME=/dev/sda
E: DEVTYPE=disk
E: MAJOR=8
E: MINOR=0
E: ID_BUS=ata
E: ID_MODEL=TACET_SATA_DISK
E: ID_SERIAL=TACET_SATA_DISK_TCSATA0001
E: ID_SERIAL_SHORT=TCSATA0001
E: ID_WWN=0x5000c500a1b2c3d4
E: ID_WWN_WITH_EXTENSION=0x5000c500a1b2c3d4

P: {SDA}/sda1
N: sda1
E: DEVPATH={SDA}/sda1
E: SUBSYSTEM=block
E: DEVNAME=/dev/sda1
E: DEVTYPE=partition

P: {NVME}
N: nvme0n1
S: disk/by-path/pci-0000:00:04.0-nvme-1
E: SUBSYSTEM=block
E: DEVNAME=/dev/nvme0n1
E: DEVTYPE=disk
E: MAJOR=259
E: ID_SERIAL_SHORT=TCNVME0001
E: ID_WWN=eui.0000000000000000

P: {VDA}
N: vda
E: SUBSYSTEM=block
E: DEVNAME=/dev/vda
E: DEVTYPE=disk
E: MAJOR=253

P: /devices/virtual/block/loop0
N: loop0
E: SUBSYSTEM=block
E: DEVNAME=/dev/loop0
E: DEVTYPE=disk
E: MAJOR=7

P: /devices/virtual/block/zram0
E: SUBSYSTEM=block
E: DEVNAME=/dev/zram0
E: DEVTYPE=disk
E: MAJOR=252

P: /devices/pci0000:00/0000:00:1f.2/ata2/host1/target1:0:0/1:0:0:0/block/sr0
E: SUBSYSTEM=block
E: DEVNAME=/dev/sr0
E: DEVTYPE=disk
E: MAJOR=11
E: ID_CDROM=1

P: /devices/virtual/block/dm-0
E: SUBSYSTEM=block
E: DEVNAME=/dev/dm-0
E: DEVTYPE=disk
E: DM_UUID=LVM-abcdef

P: /devices/virtual/block/dm-1
E: SUBSYSTEM=block
E: DEVNAME=/dev/dm-1
E: DEVTYPE=disk
E: DM_UUID=mpath-3600a098038303053453f463045727a67

P: /devices/virtual/block/md0
E: SUBSYSTEM=block
E: DEVNAME=/dev/md0
E: DEVTYPE=disk

P: /devices/pci0000:00/0000:00:06.0/host2/rport-2:0-0/target2:0:0/2:0:0:1/block/sdb
E: SUBSYSTEM=block
E: DEVNAME=/dev/sdb
E: DEVTYPE=disk
E: DM_MULTIPATH_DEVICE_PATH=1

P: /devices/pci0000:00/0000:00:06.0/host2/rport-2:0-1/target2:0:1/2:0:1:1/block/sdc
E: SUBSYSTEM=block
E: DEVNAME=/dev/sdc
E: DEVTYPE=disk

P: /devices/virtual/block/md1
E: SUBSYSTEM=block
E: DEVNAME=/dev/md1
E: DEVTYPE=disk

P: /devices/virtual/net/eth0
E: SUBSYSTEM=net
E: INTERFACE=eth0
"""

GIB_SECTORS = str(2**30 // 512) + "\n"
FC = "devices/pci0000:00/0000:00:06.0/host2"
SDB = f"{FC}/rport-2:0-0/target2:0:0/2:0:0:1/block/sdb"
SDC = f"{FC}/rport-2:0-1/target2:0:1/2:0:1:1/block/sdc"


@pytest.fixture
def sysfs(tree):
    return tree(
        {
            f"{SDA[1:]}/size": str(6 * 2**30 // 512),
            f"{SDA[1:]}/queue/rotational": "1\n",
            f"{SDA[1:]}/queue/logical_block_size": "512\n",
            f"{SDA[1:]}/queue/physical_block_size": "4096\n",
            f"{SDA[1:]}/device": Link("../../../0:0:0:0"),
            f"{SDA[1:]}/../../../0:0:0:0/model": "TACET SATA DISK \n",
            f"{SDA[1:]}/../../../0:0:0:0/vendor": "ATA     \n",
            f"{NVME[1:]}/size": str(10 * 2**30 // 512),
            f"{NVME[1:]}/queue/rotational": "0\n",
            f"{NVME[1:]}/device": Link("../../nvme0"),
            "devices/pci0000:00/0000:00:04.0/nvme/nvme0/model": "QEMU NVMe Ctrl\n",
            "devices/pci0000:00/0000:00:04.0/nvme/nvme0/serial": "TCNVME0001\n",
            f"{VDA[1:]}/size": GIB_SECTORS,
            f"{VDA[1:]}/serial": "",  # virtio disk started without serial=
            "devices/virtual/block/loop0/size": GIB_SECTORS,
            "devices/virtual/block/zram0/size": GIB_SECTORS,
            "devices/virtual/block/dm-0/size": GIB_SECTORS,
            "devices/virtual/block/dm-1/size": GIB_SECTORS,
            "devices/virtual/block/dm-1/dm/uuid": "mpath-3600a098038303053453f463045727a67\n",
            "devices/virtual/block/md0/size": GIB_SECTORS,
            "devices/virtual/block/md1/size": "0\n",  # inactive array
            f"{SDB}/size": GIB_SECTORS,
            f"{SDC}/size": GIB_SECTORS,
            f"{SDC}/holders/dm-1": Link("../../../../../../../../virtual/block/dm-1"),
            "class/block/dm-1": Link("../../devices/virtual/block/dm-1"),
        }
    )


def disks(sysfs):
    return {d.name: d for d in DiskCollector(sysfs, ExportDbSource(EXPORT_DB)).collect()}


def test_selection(sysfs):
    # sdb: udev marks it a multipath path; sdc: sysfs shows an mpath holder.
    assert sorted(disks(sysfs)) == ["/dev/dm-1", "/dev/md0", "/dev/nvme0n1", "/dev/sda", "/dev/vda"]


def test_sata_disk(sysfs):
    sda = disks(sysfs)["/dev/sda"]
    assert sda.model == "TACET SATA DISK"
    assert sda.vendor == "ATA"
    assert sda.serial == "TCSATA0001"
    assert sda.wwn == "0x5000c500a1b2c3d4"
    assert sda.wwn_with_extension == "0x5000c500a1b2c3d4"
    assert sda.wwn_vendor_extension is None
    assert sda.size == 6 * 2**30
    assert sda.rotational is True
    assert sda.hctl == "0:0:0:0"
    assert sda.by_path == "/dev/disk/by-path/pci-0000:00:1f.2-ata-1"
    assert (sda.logical_sectors, sda.physical_sectors) == (512, 4096)
    assert sda.tran == "sata"


def test_nvme_disk(sysfs):
    nvme = disks(sysfs)["/dev/nvme0n1"]
    assert nvme.model == "QEMU NVMe Ctrl"
    assert nvme.serial == "TCNVME0001"
    assert nvme.rotational is False
    assert nvme.hctl is None
    assert nvme.tran == "nvme"


def test_disk_without_serial_is_null(sysfs):
    vda = disks(sysfs)["/dev/vda"]
    assert vda.serial is None
    assert vda.model is None
    assert vda.tran == "virtio"
    assert vda.rotational is None  # queue/rotational was not there
    assert vda.by_path is None


def test_export_db_parsing():
    records = parse_export_db(EXPORT_DB)
    sda = records[0]
    assert sda.devname == "/dev/sda"
    assert sda.devtype == "disk"
    assert sda.devlinks[0] == "/dev/disk/by-id/ata-TACET_SATA_DISK_TCSATA0001"
    assert len(ExportDbSource(EXPORT_DB).block_devices()) == len(records) - 1  # not eth0


def test_uevent_source_without_udev_database(tree):
    root = tree(
        {
            f"{VDA[1:]}/uevent": "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
            f"{VDA[1:]}/size": GIB_SECTORS,
            f"{VDA[1:]}/serial": "SERIAL123",
            "class/block/vda": Link(f"../..{VDA}"),
        }
    )
    [record] = SysfsUeventSource(root).block_devices()
    assert record.devname == "/dev/vda"
    assert record.devpath == VDA
    [vda] = DiskCollector(root, SysfsUeventSource(root)).collect()
    assert vda.serial == "SERIAL123"  # the kernel's virtio serial, no udev needed


@pytest.mark.parametrize(
    ("devpath", "hctl"),
    [(SDA, "0:0:0:0"), (NVME, None), ("/devices/virtual/block/md0", None)],
)
def test_hctl(devpath, hctl):
    assert hctl_from_devpath(devpath) == hctl


@pytest.mark.parametrize(
    ("devpath", "name", "props", "tran"),
    [
        (SDA, "sda", {}, "sata"),
        (NVME, "nvme0n1", {}, "nvme"),
        (VDA, "vda", {}, "virtio"),
        (
            "/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdd",
            "sdd",
            {"ID_BUS": "usb"},
            "usb",
        ),
        (
            "/devices/pci0000:00/0000:00:02.0/virtio0/host0/target0:0:0/0:0:0:0/block/sda",
            "sda",
            {"ID_BUS": "scsi"},
            "scsi",
        ),
        (
            "/devices/pci0000:3a/0000:3a:00.0/host0/port-0:0/end_device-0:0/target0:0:0/0:0:0:0/block/sda",
            "sda",
            {},
            "sas",
        ),
        ("/devices/virtual/block/md0", "md0", {}, None),
    ],
)
def test_transport(devpath, name, props, tran):
    record = UdevRecord(
        devpath=devpath, subsystem="block", devtype="disk", devname="/dev/" + name, properties=props
    )
    assert transport(record, name) == tran
