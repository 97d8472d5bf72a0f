"""Block devices as plain records, from live udev (pyudev) or a recorded database.

pyudev is hard-wired to the running system, so collectors never see it: they get
:class:`UdevRecord` objects from a :class:`UdevSource`. Tests replay the text of
``udevadm info --export-db``; machines without a udev database fall back to the
kernel's own ``uevent`` files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .sysfs import list_dir, parse_uevent, read_text, resolve


@dataclass(frozen=True)
class UdevRecord:
    devpath: str  # relative to the sysfs root, e.g. /devices/pci0000:00/.../block/sda
    subsystem: str | None
    devtype: str | None
    devname: str | None  # /dev/sda
    properties: Mapping[str, str] = field(default_factory=dict)
    devlinks: tuple[str, ...] = ()  # full /dev paths


class UdevSource(Protocol):
    def block_devices(self) -> list[UdevRecord]: ...


def parse_export_db(text: str) -> list[UdevRecord]:
    """Records of ``udevadm info --export-db`` (blank-line separated ``X: value`` lines)."""
    records = []
    for block in text.split("\n\n"):
        devpath = None
        devname = None
        links: list[str] = []
        properties: dict[str, str] = {}
        for line in block.splitlines():
            tag, sep, value = line.partition(": ")
            if not sep:
                continue
            if tag == "P":
                devpath = value
            elif tag == "N":
                devname = "/dev/" + value
            elif tag == "S":
                links.append("/dev/" + value)
            elif tag == "E":
                key, eq, prop = value.partition("=")
                if eq:
                    properties[key] = prop
        if devpath is None:
            continue
        if not links and properties.get("DEVLINKS"):
            links = properties["DEVLINKS"].split()
        records.append(
            UdevRecord(
                devpath=devpath,
                subsystem=properties.get("SUBSYSTEM"),
                devtype=properties.get("DEVTYPE"),
                devname=properties.get("DEVNAME") or devname,
                properties=properties,
                devlinks=tuple(sorted(links)),
            )
        )
    return records


def only_block(records: Iterable[UdevRecord]) -> list[UdevRecord]:
    return [record for record in records if record.subsystem == "block"]


class ExportDbSource:
    """Replays a recorded ``udevadm info --export-db``."""

    def __init__(self, text: str) -> None:
        self.records = only_block(parse_export_db(text))

    def block_devices(self) -> list[UdevRecord]:
        return list(self.records)


class SysfsUeventSource:
    """Block devices from ``class/block/*/uevent`` when there is no udev database.

    These records carry only what the kernel itself announces (DEVNAME, DEVTYPE,
    MAJOR, MINOR); collectors then fall back to sysfs attributes for identity.
    """

    def __init__(self, sysfs: Path) -> None:
        self.sysfs = sysfs

    def block_devices(self) -> list[UdevRecord]:
        records = []
        class_dir = self.sysfs / "class" / "block"
        for name in list_dir(class_dir):
            real = resolve(class_dir / name)
            try:
                devpath = "/" + str(real.relative_to(resolve(self.sysfs)))
            except ValueError:
                continue
            properties = parse_uevent(read_text(real / "uevent"))
            properties.setdefault("SUBSYSTEM", "block")
            devname = properties.get("DEVNAME")
            if devname and not devname.startswith("/dev/"):
                devname = "/dev/" + devname
                properties["DEVNAME"] = devname
            records.append(
                UdevRecord(
                    devpath=devpath,
                    subsystem="block",
                    devtype=properties.get("DEVTYPE"),
                    devname=devname,
                    properties=properties,
                )
            )
        return records


class PyudevSource:
    """The running system's udev database through pyudev."""

    def __init__(self) -> None:
        import pyudev

        self.context = pyudev.Context()

    def block_devices(self) -> list[UdevRecord]:
        records = []
        sys_root = str(self.context.sys_path)
        for device in self.context.list_devices(subsystem="block"):
            properties = dict(device.properties.items())
            records.append(
                UdevRecord(
                    devpath=device.sys_path[len(sys_root) :],
                    subsystem=device.subsystem,
                    devtype=device.device_type,
                    devname=device.device_node,
                    properties=properties,
                    devlinks=tuple(sorted(device.device_links)),
                )
            )
        return records
