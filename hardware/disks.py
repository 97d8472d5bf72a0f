"""Whole disks (including md, hardware RAID volumes and multipath maps) for the inventory."""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path

from .model import Disk
from .sysfs import list_dir, read_int, read_stripped
from .udev import UdevRecord, UdevSource

SECTOR = 512
# Kernel block majors that are never install targets: ramdisk, floppy, loop, SCSI CD-ROM.
EXCLUDED_MAJORS = frozenset({"1", "2", "7", "11"})
EXCLUDED_NAME = re.compile(r"^(?:loop|ram|zram|sr|fd|nbd)\d")
LOOP_NAME = re.compile(r"^loop\d+$")
HCTL = re.compile(r"^\d+:\d+:\d+:\d+$")


def is_multipath_map(record: UdevRecord, dm_uuid: str | None) -> bool:
    uuid = record.properties.get("DM_UUID") or dm_uuid or ""
    return uuid.startswith("mpath-")


def is_loop_device(device: str) -> bool:
    """``/dev/loop3`` or ``loop3`` (not one of its partitions)."""
    return bool(LOOP_NAME.match(device.removeprefix("/dev/")))


def loop_device_allowed(device: str, allowed: bool | Collection[str]) -> bool:
    """Whether a loop device is seen: all of them (True), none (False), or those named."""
    if isinstance(allowed, bool):
        return allowed
    return device.removeprefix("/dev/") in {name.removeprefix("/dev/") for name in allowed}


def hctl_from_devpath(devpath: str) -> str | None:
    parts = devpath.strip("/").split("/")
    if "block" in parts:
        index = parts.index("block")
        if index > 0 and HCTL.match(parts[index - 1]):
            return parts[index - 1]
    return None


def transport(record: UdevRecord, name: str) -> str | None:
    """Transport as ``lsblk -o TRAN`` names it, derived from the device's sysfs path."""
    path = record.devpath
    bus = record.properties.get("ID_BUS")
    if name.startswith("nvme"):
        return "nvme"
    if "/usb" in path or bus == "usb":
        return "usb"
    if "/virtio" in path and not re.search(r"/host\d+/", path):
        return "virtio"
    if re.search(r"/end_device-|/sas_|/port-\d+:\d+", path):
        return "sas"
    if re.search(r"/ata\d+/", path) or bus == "ata":
        return "sata"
    if "/session" in path:
        return "iscsi"
    if "/rport-" in path:
        return "fc"
    if name.startswith("mmcblk"):
        return "mmc"
    if re.search(r"/host\d+/target", path):
        return "scsi"
    return None


def choose_by_path(links: tuple[str, ...]) -> str | None:
    candidates = sorted(link for link in links if link.startswith("/dev/disk/by-path/"))
    return candidates[0] if candidates else None


def _first(*values: str | None) -> str | None:
    for value in values:
        if value is not None and value.strip():
            return value.strip()
    return None


class DiskCollector:
    def __init__(
        self, sysfs: Path, udev: UdevSource, allow_loop_devices: bool | Collection[str] = False
    ) -> None:
        """``allow_loop_devices``: attached loop devices (with a backing file) count as
        disks, all of them (True) or only those named, for trying things out on a
        machine without a spare disk."""
        self.sysfs = sysfs
        self.udev = udev
        self.allow_loop_devices = allow_loop_devices

    def _dir(self, record: UdevRecord) -> Path:
        return self.sysfs / record.devpath.lstrip("/")

    def _dm_uuid(self, directory: Path) -> str | None:
        return read_stripped(directory / "dm" / "uuid")

    def _is_multipath_member(self, record: UdevRecord, directory: Path) -> bool:
        if record.properties.get("DM_MULTIPATH_DEVICE_PATH") == "1":
            return True
        block_class = self.sysfs / "class" / "block"
        for holder in list_dir(directory / "holders"):
            if (read_stripped(block_class / holder / "dm" / "uuid") or "").startswith("mpath-"):
                return True
        return False

    def wanted(self, record: UdevRecord) -> bool:
        if record.devtype != "disk" or not record.devname:
            return False
        name = record.devname.removeprefix("/dev/")
        props = record.properties
        directory = self._dir(record)
        if is_loop_device(name) and loop_device_allowed(name, self.allow_loop_devices):
            backing = read_stripped(directory / "loop" / "backing_file")
            return bool(backing) and bool(read_int(directory / "size"))
        if EXCLUDED_NAME.match(name) or props.get("MAJOR") in EXCLUDED_MAJORS:
            return False
        if props.get("ID_CDROM") == "1" or props.get("ID_TYPE") in ("cd", "floppy"):
            return False
        if name.startswith("dm-") and not is_multipath_map(record, self._dm_uuid(directory)):
            return False  # LVM, crypt and other dm targets are not disks
        if self._is_multipath_member(record, directory):
            return False
        return bool(read_int(directory / "size"))

    def describe(self, record: UdevRecord) -> Disk:
        assert record.devname is not None
        directory = self._dir(record)
        props = record.properties
        name = record.devname.removeprefix("/dev/")
        device = directory / "device"
        rotational = read_stripped(directory / "queue" / "rotational")
        return Disk(
            name=record.devname,
            model=_first(read_stripped(device / "model"), props.get("ID_MODEL")),
            size=(read_int(directory / "size") or 0) * SECTOR,
            rotational=None if rotational is None else rotational == "1",
            serial=_first(
                # For SCSI/SAS disks udev derives ID_SERIAL_SHORT from the WWN (VPD page
                # 0x83); the unit serial printed on the label is VPD 0x80, ID_SCSI_SERIAL.
                props.get("ID_SCSI_SERIAL"),
                props.get("ID_SERIAL_SHORT"),
                props.get("ID_SERIAL"),
                # Without a udev database, the kernel still exposes these serials.
                read_stripped(directory / "serial"),  # virtio-blk
                read_stripped(device / "serial") if name.startswith("nvme") else None,
            ),
            wwn=_first(props.get("ID_WWN")),
            wwn_with_extension=_first(props.get("ID_WWN_WITH_EXTENSION")),
            wwn_vendor_extension=_first(props.get("ID_WWN_VENDOR_EXTENSION")),
            vendor=_first(read_stripped(device / "vendor"), props.get("ID_VENDOR")),
            hctl=hctl_from_devpath(record.devpath),
            by_path=choose_by_path(record.devlinks),
            logical_sectors=read_int(directory / "queue" / "logical_block_size"),
            physical_sectors=read_int(directory / "queue" / "physical_block_size"),
            tran=transport(record, name),
        )

    def collect(self) -> list[Disk]:
        disks = [
            self.describe(record) for record in self.udev.block_devices() if self.wanted(record)
        ]
        return sorted(disks, key=lambda disk: disk.name)
