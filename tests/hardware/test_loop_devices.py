"""Loop devices as disks: only when the caller opts in, and only attached ones."""

from __future__ import annotations

from hardware.disks import DiskCollector, is_loop_device
from hardware.udev import ExportDbSource
from tests.hardware.test_disks import EXPORT_DB, sysfs

__all__ = ["sysfs"]  # the fixture, shared with test_disks
LOOP0 = "devices/virtual/block/loop0"


def names(sysfs, allow):
    return [d.name for d in DiskCollector(sysfs, ExportDbSource(EXPORT_DB), allow).collect()]


def test_attached_loop_device_is_a_disk_only_when_allowed(sysfs):
    (sysfs / LOOP0 / "loop").mkdir()
    (sysfs / LOOP0 / "loop" / "backing_file").write_text("/var/tmp/disk.img\n")
    assert "/dev/loop0" not in names(sysfs, allow=False)
    assert "/dev/loop0" in names(sysfs, allow=True)
    loop0 = next(
        d
        for d in DiskCollector(sysfs, ExportDbSource(EXPORT_DB), True).collect()
        if d.name == "/dev/loop0"
    )
    assert loop0.size == 2**30


def test_loop_device_without_backing_file_is_never_a_disk(sysfs):
    assert "/dev/loop0" not in names(sysfs, allow=True)  # nothing attached
    others = names(sysfs, allow=False)
    assert names(sysfs, allow=True) == others  # zram, sr, dm targets stay excluded


def test_is_loop_device():
    assert is_loop_device("/dev/loop0") and is_loop_device("loop12")
    assert not is_loop_device("/dev/loop0p1")
    assert not is_loop_device("/dev/sda")
