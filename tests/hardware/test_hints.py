import pytest

from hardware.hints import (
    HintError,
    NoMatchingDisk,
    find_devices_by_hints,
    match_root_device_hints,
    parse_hints,
    select_root_device,
)
from hardware.model import Disk

GIB = 2**30


def disk(name, size_gib, **fields):
    values = dict(
        model=None,
        rotational=None,
        serial=None,
        wwn=None,
        wwn_with_extension=None,
        wwn_vendor_extension=None,
        vendor=None,
        hctl=None,
        by_path=None,
        logical_sectors=512,
        physical_sectors=512,
        tran=None,
    )
    values.update(fields)
    return Disk(name=name, size=int(size_gib * GIB), **values)


DISKS = [
    disk(
        "/dev/sda",
        2,
        model="SanDisk Cruzer",
        serial="USB123",
        rotational=False,
        tran="usb",
        vendor="SanDisk",
    ),
    disk(
        "/dev/sdb",
        480,
        model="Samsung SSD 860",
        serial="S3Z9NB0K123456",
        rotational=False,
        wwn="0x5002538e40a1b2c3",
        hctl="1:0:0:0",
        vendor="ATA",
        tran="sata",
        by_path="/dev/disk/by-path/pci-0000:00:17.0-ata-2",
    ),
    disk(
        "/dev/sdc",
        4000,
        model="ST4000NM0035",
        serial="ZC11ABCD",
        rotational=True,
        wwn="0x5000c500a1b2c3d4",
        wwn_with_extension="0x5000c500a1b2c3d4",
        hctl="2:0:0:0",
        vendor="SEAGATE",
        tran="sas",
    ),
    disk(
        "/dev/nvme0n1",
        10,
        model="QEMU NVMe Ctrl",
        serial="TCNVME0001",
        rotational=False,
        tran="nvme",
    ),
]


def names(hints):
    return [d.name for d in find_devices_by_hints(DISKS, hints)]


@pytest.mark.parametrize(
    ("hints", "expected"),
    [
        ({"serial": "ZC11ABCD"}, ["/dev/sdc"]),
        ({"serial": "zc11abcd"}, ["/dev/sdc"]),  # case-insensitive
        ({"serial": "s== ZC11ABCD"}, ["/dev/sdc"]),
        ({"serial": "s!= ZC11ABCD"}, ["/dev/sda", "/dev/sdb", "/dev/nvme0n1"]),
        ({"model": "<in> samsung"}, ["/dev/sdb"]),
        ({"model": "<or> ST4000NM0035 <or> QEMU NVMe Ctrl"}, ["/dev/sdc", "/dev/nvme0n1"]),
        ({"model": "<all-in> qemu nvme"}, ["/dev/nvme0n1"]),
        ({"size": 480}, ["/dev/sdb"]),
        ({"size": "480"}, ["/dev/sdb"]),
        ({"size": ">= 100"}, ["/dev/sdb", "/dev/sdc"]),
        ({"size": "< 100"}, ["/dev/sda", "/dev/nvme0n1"]),
        ({"size": "<= 10"}, ["/dev/sda", "/dev/nvme0n1"]),
        ({"size": "!= 480"}, ["/dev/sda", "/dev/sdc", "/dev/nvme0n1"]),
        ({"size": "= 480"}, ["/dev/sdb", "/dev/sdc"]),  # ironic's quirk: "=" is ">="
        ({"size": "<range-in> [10 480]"}, ["/dev/sdb", "/dev/nvme0n1"]),
        ({"size": "<range-in> (10 480)"}, []),
        ({"size": "<or> 2 <or> 4000"}, ["/dev/sda", "/dev/sdc"]),
        ({"rotational": True}, ["/dev/sdc"]),
        ({"rotational": "false", "size": ">= 100"}, ["/dev/sdb"]),
        ({"wwn": "0x5000C500A1B2C3D4"}, ["/dev/sdc"]),
        ({"wwn_with_extension": "0x5000c500a1b2c3d4"}, ["/dev/sdc"]),
        ({"hctl": "1:0:0:0"}, ["/dev/sdb"]),
        ({"name": "/dev/nvme0n1"}, ["/dev/nvme0n1"]),
        ({"by_path": "/dev/disk/by-path/pci-0000:00:17.0-ata-2"}, ["/dev/sdb"]),
        ({"tran": "sas"}, ["/dev/sdc"]),
        ({"vendor": "seagate", "serial": "ZC11ABCD"}, ["/dev/sdc"]),
        ({"vendor": "seagate", "serial": "S3Z9NB0K123456"}, []),  # all hints must match
        ({"wwn_vendor_extension": "0x1"}, []),  # a missing value never matches
        ({"model": "s== SanDisk Cruzer"}, ["/dev/sda"]),  # spaces in values
    ],
)
def test_hint_matching(hints, expected):
    assert names(hints) == expected


@pytest.mark.parametrize(
    ("hints", "message"),
    [
        ({"colour": "blue"}, "unknown root device hint"),
        ({"size": "big"}, "not an integer"),
        ({"size": 0}, "positive integer"),
        ({"size": -5}, "positive integer"),
        ({"size": "s== 10"}, "does not apply to numbers"),
        ({"size": "<range-in> 10 20"}, "<range-in> needs"),
        ({"size": True}, "must be a number"),
        ({"serial": 12345}, "must be a string"),
        ({"serial": "   "}, "empty expression"),
        ({"rotational": "maybe"}, "not a boolean"),
        ({"model": ">= 5"}, "needs a number"),
    ],
)
def test_malformed_hints(hints, message):
    with pytest.raises(HintError, match=message):
        parse_hints(hints)


def test_hints_must_be_a_mapping():
    with pytest.raises(HintError, match="must be an object"):
        parse_hints(["serial"])  # type: ignore[arg-type]


def test_match_returns_first_or_none():
    assert match_root_device_hints(DISKS, {"rotational": False}).name == "/dev/sda"
    assert match_root_device_hints(DISKS, {"serial": "nope"}) is None


def test_default_is_smallest_disk_of_at_least_4_gib():
    assert select_root_device(DISKS).name == "/dev/nvme0n1"  # the 2 GiB stick is too small
    assert select_root_device(DISKS, {}).name == "/dev/nvme0n1"


def test_select_with_hints_and_errors():
    assert select_root_device(DISKS, {"serial": "ZC11ABCD"}).name == "/dev/sdc"
    with pytest.raises(NoMatchingDisk, match="no disk matches"):
        select_root_device(DISKS, {"serial": "nope"})
    with pytest.raises(NoMatchingDisk, match="at least 4 GiB"):
        select_root_device(DISKS[:1])
    with pytest.raises(HintError):
        select_root_device(DISKS, {"size": "huge"})


def test_dict_disks_are_accepted_like_ironic():
    found = list(find_devices_by_hints([{"name": "/dev/sdx", "size": 8 * GIB}], {"size": 8}))
    assert found == [{"name": "/dev/sdx", "size": 8 * GIB}]
