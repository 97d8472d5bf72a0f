import struct

import pytest

from hardware.memory import (
    MemoryCollector,
    parse_dmidecode_memory,
    parse_meminfo_total,
    parse_smbios_memory_device,
)
from hardware.runner import RecordedRunner


def type17(size: int, extended: int | None = None) -> bytes:
    """A minimal SMBIOS 2.7+ memory device structure (0x28 bytes) with a size field."""
    body = bytearray(0x28)
    body[0], body[1] = 17, 0x28
    struct.pack_into("<H", body, 0x0C, size)
    if extended is not None:
        struct.pack_into("<I", body, 0x1C, extended)
    return bytes(body) + b"\0\0"


@pytest.mark.parametrize(
    ("raw", "mib"),
    [
        (type17(16384), 16384),
        (type17(0), 0),  # empty slot
        (type17(0xFFFF), None),  # unknown
        (type17(0x8000 | 512 * 1024 // 1024), 0),  # 512 KiB
        (type17(0x8000 | 2048), 2),  # 2048 KiB in KiB units
        (type17(0x7FFF, 65536), 65536),  # extended size
        (type17(0x7FFF)[:0x18], None),  # extended but truncated
        (b"\x11\x05", None),
        (b"\x10" + bytes(0x20), None),  # wrong structure type
    ],
)
def test_smbios_type17_sizes(raw, mib):
    assert parse_smbios_memory_device(raw) == mib


def test_meminfo_total():
    assert parse_meminfo_total("MemTotal:       24684044 kB\nMemFree: 1 kB\n") == 24684044 * 1024
    assert parse_meminfo_total("MemFree: 1 kB\n") is None
    assert parse_meminfo_total("MemTotal: lots\n") is None


DMIDECODE = """# dmidecode 3.4
Handle 0x1100, DMI type 17, 40 bytes
Memory Device
\tTotal Width: 72 bits
\tSize: 32 GB
\tLocator: DIMM_A1

Handle 0x1101, DMI type 17, 40 bytes
Memory Device
\tSize: No Module Installed
\tLocator: DIMM_A2

Handle 0x1102, DMI type 17, 40 bytes
Memory Device
\tSize: 16384 MB
\tLocator: DIMM_B1
"""


def test_dmidecode_sum():
    assert parse_dmidecode_memory(DMIDECODE) == 32768 + 16384
    assert parse_dmidecode_memory("") is None
    assert parse_dmidecode_memory("\tSize: No Module Installed\n") == 0


def test_collector_sums_sysfs_entries_and_ignores_other_types(tree):
    root = tree(
        {
            "firmware/dmi/entries/17-0/raw": type17(8192),
            "firmware/dmi/entries/17-1/raw": type17(0),
            "firmware/dmi/entries/17-2/raw": type17(0x7FFF, 131072),
            "firmware/dmi/entries/16-0/raw": b"\x10" + bytes(0x20),
        }
    )
    memory = MemoryCollector(root, lambda: 42, RecordedRunner(root / "none")).collect()
    assert memory.physical_mb == 8192 + 131072
    assert memory.total == 42


def test_collector_falls_back_to_dmidecode_then_null(tree):
    root = tree({"commands/dmidecode_--type_17.txt": DMIDECODE, "sys": None})
    runner = RecordedRunner(root / "commands")
    assert MemoryCollector(root / "sys", lambda: None, runner).physical_mb() == 49152
    empty = MemoryCollector(root / "sys", lambda: None, RecordedRunner(root / "x"))
    assert empty.physical_mb() is None


def test_all_unknown_sizes_is_null(tree):
    root = tree({"firmware/dmi/entries/17-0/raw": type17(0xFFFF)})
    assert MemoryCollector(root, lambda: None, RecordedRunner(root)).physical_mb() is None


def structure(kind: int, formatted: bytes, strings: list[bytes]) -> bytes:
    body = bytes([kind, 4 + len(formatted)]) + b"\x00\x10" + formatted
    string_set = b"".join(s + b"\0" for s in strings) + b"\0" if strings else b"\0\0"
    return body + string_set


def test_smbios_table_walk_handles_string_sets():
    dimm = type17(4096)[:-2]  # formatted area only
    table = (
        structure(0, bytes(20), [b"TacetBIOS", b"1.2.3"])
        + dimm
        + b"DIMM 0\0Tacet\0\0"
        + structure(16, bytes(10), [])
        + dimm
        + b"\0\0"
        + structure(127, b"", [])
        + b"garbage after end"
    )
    from hardware.memory import iter_smbios_structures

    kinds = [kind for kind, _raw in iter_smbios_structures(table)]
    assert kinds == [0, 17, 16, 17, 127]
    assert [
        parse_smbios_memory_device(raw) for k, raw in iter_smbios_structures(table) if k == 17
    ] == [4096, 4096]


def test_truncated_table_stops_cleanly():
    from hardware.memory import iter_smbios_structures

    assert iter_smbios_structures(b"\x11\x28\x00") == []
    assert iter_smbios_structures(b"\x11\x02\x00\x00") == []  # length below header size


def test_collector_reads_the_raw_table_first(tree):
    table = type17(2048)[:-2] + b"\0\0" + type17(0x7FFF, 8192)[:-2] + b"\0\0"
    root = tree(
        {
            "firmware/dmi/tables/DMI": table,
            "firmware/dmi/entries/17-0/raw": type17(1),  # ignored: the table wins
        }
    )
    assert MemoryCollector(root, lambda: None, RecordedRunner(root)).physical_mb() == 10240
