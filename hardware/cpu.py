"""CPU model, frequency, counts and flags from /proc/cpuinfo and sysfs topology."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .model import Cpu
from .sysfs import read_int, read_stripped, read_text


@dataclass(frozen=True)
class CpuInfo:
    """What /proc/cpuinfo says, per architecture's own key names."""

    model_name: str | None
    mhz: float | None
    processors: int
    flags: tuple[str, ...]
    physical_ids: frozenset[str]


def parse_cpuinfo(text: str) -> CpuInfo:
    blocks = [block for block in text.split("\n\n") if block.strip()]
    model_name = None
    mhz_values: list[float] = []
    flags: tuple[str, ...] = ()
    physical_ids: set[str] = set()
    processors = 0
    for block in blocks:
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" in fields:
            processors += 1
        # x86 says "model name"; some arm64 kernels "Processor"; s390x/ppc vary.
        for key in ("model name", "Processor", "cpu model", "cpu"):
            if model_name is None and fields.get(key) and not fields[key].isdigit():
                model_name = fields[key]
        if "cpu MHz" in fields:
            with contextlib.suppress(ValueError):
                mhz_values.append(float(fields["cpu MHz"]))
        if not flags:
            raw_flags = fields.get("flags") or fields.get("Features")
            if raw_flags:
                flags = tuple(raw_flags.split())
        if "physical id" in fields:
            physical_ids.add(fields["physical id"])
    return CpuInfo(
        model_name=model_name,
        mhz=max(mhz_values) if mhz_values else None,
        processors=processors,
        flags=flags,
        physical_ids=frozenset(physical_ids),
    )


def parse_cpu_list(text: str | None) -> list[int]:
    """Kernel CPU list syntax (``0-3,8,10-11``) to CPU numbers."""
    cpus: list[int] = []
    for part in (text or "").strip().split(","):
        if not part:
            continue
        first, sep, last = part.partition("-")
        try:
            if sep:
                cpus.extend(range(int(first), int(last) + 1))
            else:
                cpus.append(int(first))
        except ValueError:
            return []
    return cpus


def format_mhz(mhz: float | None) -> str | None:
    """IPA reports frequency as lscpu prints it, a string in MHz."""
    return None if mhz is None else f"{mhz:.4f}"


class CpuCollector:
    def __init__(
        self,
        sysfs: Path,
        procfs: Path,
        architecture: Callable[[], str | None],
        logical_count: Callable[[], int | None],
    ) -> None:
        self.cpu_dir = sysfs / "devices" / "system" / "cpu"
        self.procfs = procfs
        self.architecture = architecture
        self.logical_count = logical_count

    def max_mhz(self, cpus: list[int]) -> float | None:
        khz_values = []
        for cpu in cpus or [0]:
            khz = read_int(self.cpu_dir / f"cpu{cpu}" / "cpufreq" / "cpuinfo_max_freq")
            if khz:
                khz_values.append(khz)
        return max(khz_values) / 1000 if khz_values else None

    def socket_count(self, cpus: list[int], info: CpuInfo) -> int | None:
        packages = set()
        for cpu in cpus:
            package = read_stripped(self.cpu_dir / f"cpu{cpu}" / "topology" / "physical_package_id")
            if package is not None and package != "-1":
                packages.add(package)
        if packages:
            return len(packages)
        return len(info.physical_ids) or None

    def collect(self) -> Cpu:
        info = parse_cpuinfo(read_text(self.procfs / "cpuinfo") or "")
        online = parse_cpu_list(read_text(self.cpu_dir / "online"))
        count = self.logical_count() or len(online) or info.processors or None
        return Cpu(
            model_name=info.model_name,
            frequency=format_mhz(self.max_mhz(online) or info.mhz),
            count=count,
            architecture=self.architecture(),
            flags=list(info.flags),
            socket_count=self.socket_count(online, info),
        )
