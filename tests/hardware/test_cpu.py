from pathlib import Path

import pytest

from hardware.cpu import CpuCollector, format_mhz, parse_cpu_list, parse_cpuinfo

FIXTURES = Path(__file__).parent.parent / "fixtures"

X86_TWO_SOCKETS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
cpu MHz\t\t: 2000.000
physical id\t: 0
flags\t\t: fpu vme sse2 avx512f

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
cpu MHz\t\t: 3200.125
physical id\t: 1
flags\t\t: fpu vme sse2 avx512f
"""

ARM64 = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8

processor\t: 1
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
"""


def test_parse_x86():
    info = parse_cpuinfo(X86_TWO_SOCKETS)
    assert info.model_name == "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
    assert info.mhz == 3200.125
    assert info.processors == 2
    assert info.flags == ("fpu", "vme", "sse2", "avx512f")
    assert info.physical_ids == {"0", "1"}


def test_parse_arm64_has_no_model_name_and_uses_features():
    info = parse_cpuinfo(ARM64)
    assert info.model_name is None  # never invented from implementer ids
    assert info.mhz is None
    assert info.processors == 2
    assert "asimd" in info.flags


def test_parse_empty():
    info = parse_cpuinfo("")
    assert (info.model_name, info.mhz, info.processors, info.flags) == (None, None, 0, ())


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0", [0]), ("0-3", [0, 1, 2, 3]), ("0-1,4,6-7\n", [0, 1, 4, 6, 7]), ("", []), ("x", [])],
)
def test_cpu_list(text, cpus):
    assert parse_cpu_list(text) == cpus


def test_frequency_format_matches_lscpu():
    assert format_mhz(2445.404) == "2445.4040"
    assert format_mhz(None) is None


def test_collector_prefers_sysfs_max_frequency_and_topology(tree):
    root = tree(
        {
            "proc/cpuinfo": X86_TWO_SOCKETS,
            "sys/devices/system/cpu/online": "0-1\n",
            "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq": "3500000\n",
            "sys/devices/system/cpu/cpu1/cpufreq/cpuinfo_max_freq": "3500000\n",
            "sys/devices/system/cpu/cpu0/topology/physical_package_id": "0\n",
            "sys/devices/system/cpu/cpu1/topology/physical_package_id": "0\n",
        }
    )
    cpu = CpuCollector(root / "sys", root / "proc", lambda: "x86_64", lambda: None).collect()
    assert cpu.frequency == "3500.0000"
    assert cpu.count == 2
    assert cpu.socket_count == 1  # sysfs topology wins over cpuinfo's physical ids
    assert cpu.architecture == "x86_64"


def test_collector_without_sysfs_falls_back_to_cpuinfo(tree):
    root = tree({"proc/cpuinfo": X86_TWO_SOCKETS, "sys": None})
    cpu = CpuCollector(root / "sys", root / "proc", lambda: None, lambda: None).collect()
    assert cpu.frequency == "3200.1250"
    assert cpu.count == 2
    assert cpu.socket_count == 2
    assert cpu.architecture is None


def test_collector_with_nothing_reports_nulls(tmp_path):
    cpu = CpuCollector(tmp_path, tmp_path, lambda: None, lambda: None).collect()
    assert cpu.model_name is None
    assert cpu.frequency is None
    assert cpu.count is None
    assert cpu.socket_count is None
    assert cpu.flags == []
