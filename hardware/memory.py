"""Memory size: the kernel's usable total and the installed DIMMs from SMBIOS."""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from pathlib import Path

from .model import Memory
from .runner import CommandRunner
from .sysfs import list_dir, read_bytes

LOG = logging.getLogger(__name__)

SMBIOS_MEMORY_DEVICE = 17


def parse_meminfo_total(text: str) -> int | None:
    """``MemTotal`` of ``/proc/meminfo`` in bytes (what psutil reports as total)."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            try:
                return int(parts[1]) * 1024
            except (IndexError, ValueError):
                return None
    return None


def parse_smbios_memory_device(raw: bytes) -> int | None:
    """Size in MiB of one SMBIOS type 17 structure; 0 for an empty slot, None if unknown.

    Layout (DMTF DSP0134): size word at offset 0x0C, bit 15 set means KiB units,
    0x7FFF means the real size is the extended-size dword at 0x1C, 0xFFFF unknown.
    """
    if len(raw) < 0x0E or raw[0] != SMBIOS_MEMORY_DEVICE:
        return None
    length = raw[1]
    size: int = struct.unpack_from("<H", raw, 0x0C)[0]
    if size == 0:
        return 0
    if size == 0xFFFF:
        return None
    if size == 0x7FFF:
        if length < 0x20 or len(raw) < 0x20:
            return None
        extended: int = struct.unpack_from("<I", raw, 0x1C)[0]
        return extended & 0x7FFFFFFF
    if size & 0x8000:
        return (size & 0x7FFF) // 1024
    return size


def iter_smbios_structures(table: bytes) -> list[tuple[int, bytes]]:
    """(type, formatted area) of every structure in a raw SMBIOS table (``tables/DMI``).

    Each structure is a header (type, length, handle), ``length`` bytes of formatted
    area, then a string set that ends with two NUL bytes. Type 127 ends the table.
    """
    structures = []
    offset = 0
    while offset + 4 <= len(table):
        kind, length = table[offset], table[offset + 1]
        if length < 4 or offset + length > len(table):
            break  # corrupt: stop rather than misread what follows
        structures.append((kind, table[offset : offset + length]))
        end = table.find(b"\0\0", offset + length)
        if end < 0:
            break
        offset = end + 2
        if kind == 127:
            break
    return structures


def parse_dmidecode_memory(text: str) -> int | None:
    """Sum of ``Size:`` lines of ``dmidecode --type 17`` in MiB; None if none is known."""
    total = 0
    known = False
    multipliers = {"KB": 1 / 1024, "kB": 1 / 1024, "MB": 1, "GB": 1024, "TB": 1024 * 1024}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("Size:"):
            continue
        parts = stripped.split()
        if len(parts) == 3 and parts[2] in multipliers:
            try:
                total += int(int(parts[1]) * multipliers[parts[2]])
                known = True
            except ValueError:
                continue
        elif "No Module Installed" in stripped:
            known = True
    return total if known else None


class MemoryCollector:
    def __init__(
        self, sysfs: Path, total_bytes: Callable[[], int | None], runner: CommandRunner
    ) -> None:
        self.table = sysfs / "firmware" / "dmi" / "tables" / "DMI"
        self.entries = sysfs / "firmware" / "dmi" / "entries"
        self.total_bytes = total_bytes
        self.runner = runner

    def _type17_structures(self) -> list[bytes]:
        """From the raw table (always there with SMBIOS), else the dmi-sysfs entries."""
        table = read_bytes(self.table)
        if table:
            return [
                raw for kind, raw in iter_smbios_structures(table) if kind == SMBIOS_MEMORY_DEVICE
            ]
        structures = []
        for entry in list_dir(self.entries):
            if entry.split("-")[0] == str(SMBIOS_MEMORY_DEVICE):
                raw = read_bytes(self.entries / entry / "raw")
                if raw is not None:
                    structures.append(raw)
        return structures

    def physical_mb(self) -> int | None:
        structures = self._type17_structures()
        if structures:
            known = [s for s in map(parse_smbios_memory_device, structures) if s is not None]
            return sum(known) if known else None
        # No SMBIOS in sysfs: dmidecode (only if installed) may still reach the table.
        output = self.runner.run(["dmidecode", "--type", "17"], timeout=10)
        if output is None:
            return None
        return parse_dmidecode_memory(output)

    def collect(self) -> Memory:
        return Memory(total=self.total_bytes(), physical_mb=self.physical_mb())
