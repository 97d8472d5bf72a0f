"""Where the inventory reads from: the running machine, or a recorded fixture.

This is the only module that decides between live system access and recordings;
collectors receive roots and small callables from a :class:`Sources` object.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import ethtool
from .cpu import parse_cpuinfo
from .lldp import Tlvs, capture_lldp
from .memory import parse_meminfo_total
from .net import Addresses, AddressSource, EthtoolSource, NetifacesAddresses, parse_ip_json
from .runner import CommandRunner, RecordedRunner, SubprocessRunner
from .sysfs import read_text
from .udev import ExportDbSource, PyudevSource, SysfsUeventSource, UdevSource

IPMI_DEVICE_NODES = ("ipmi0", "ipmi/0", "ipmidev/0")


@dataclass(frozen=True)
class HostFacts:
    hostname: str | None
    architecture: str | None
    logical_cpus: int | None
    memory_total: int | None
    ipmi_devices: tuple[str, ...]


class LiveEthtool:
    def permanent_mac(self, name: str) -> str | None:
        return ethtool.permanent_mac(name)

    def driver(self, name: str) -> str | None:
        return ethtool.driver_name(name)


class RecordedEthtool:
    def __init__(self, data: dict[str, dict[str, str | None]]) -> None:
        self.data = data

    def permanent_mac(self, name: str) -> str | None:
        return self.data.get(name, {}).get("permaddr")

    def driver(self, name: str) -> str | None:
        return self.data.get(name, {}).get("driver")


class RecordedAddresses:
    def __init__(self, text: str) -> None:
        self.parsed = parse_ip_json(text)

    def addresses(self) -> dict[str, Addresses]:
        return self.parsed


@dataclass(frozen=True)
class Sources:
    sysfs: Path
    procfs: Path
    cmdline: str
    udev: UdevSource
    addresses: AddressSource
    ethtool: EthtoolSource
    runner: CommandRunner
    facts_loader: Callable[[], HostFacts]  # lazy, so a failure stays in one collector
    lldp: Callable[[list[str], float], dict[str, Tlvs]] = lambda names, timeout: {}

    def facts(self) -> HostFacts:
        return self.facts_loader()


def _live_facts() -> HostFacts:
    import psutil

    return HostFacts(
        hostname=socket.gethostname() or None,
        architecture=platform.machine() or None,
        logical_cpus=psutil.cpu_count(logical=True),
        memory_total=int(psutil.virtual_memory().total),
        ipmi_devices=tuple(n for n in IPMI_DEVICE_NODES if os.path.exists("/dev/" + n)),
    )


def live_sources(cmdline: str | None = None) -> Sources:
    """The running machine. ``cmdline`` comes from the agent's config when it has one."""
    sysfs, procfs = Path("/sys"), Path("/proc")
    if cmdline is None:
        cmdline = read_text(procfs / "cmdline") or ""
    udev: UdevSource
    # Without a udev database (containers, microVMs) libudev still enumerates but
    # knows nothing beyond uevent; use the kernel's view directly then.
    udev = PyudevSource() if Path("/run/udev/data").is_dir() else SysfsUeventSource(sysfs)
    return Sources(
        sysfs=sysfs,
        procfs=procfs,
        cmdline=cmdline,
        udev=udev,
        addresses=NetifacesAddresses(),
        ethtool=LiveEthtool(),
        runner=SubprocessRunner(),
        facts_loader=_live_facts,
        lldp=capture_lldp,
    )


def fixture_sources(root: Path) -> Sources:
    """A machine captured by ``record-fixture`` (see ``hardware/record_fixture.py``)."""
    host: dict[str, Any] = json.loads(read_text(root / "host.json") or "{}")
    procfs = root / "proc"

    def facts() -> HostFacts:
        cpuinfo = parse_cpuinfo(read_text(procfs / "cpuinfo") or "")
        return HostFacts(
            hostname=host.get("hostname"),
            architecture=host.get("machine"),
            logical_cpus=host.get("cpu_count") or cpuinfo.processors or None,
            memory_total=parse_meminfo_total(read_text(procfs / "meminfo") or ""),
            ipmi_devices=tuple(host.get("ipmi_devices", ())),
        )

    udev_db = read_text(root / "udev-db.txt")
    udev: UdevSource = (
        ExportDbSource(udev_db) if udev_db is not None else SysfsUeventSource(root / "sys")
    )
    return Sources(
        sysfs=root / "sys",
        procfs=procfs,
        cmdline=read_text(procfs / "cmdline") or "",
        udev=udev,
        addresses=RecordedAddresses(read_text(root / "ip-addr.json") or "[]"),
        ethtool=RecordedEthtool(json.loads(read_text(root / "ethtool.json") or "{}")),
        runner=RecordedRunner(root / "commands"),
        facts_loader=facts,
    )
