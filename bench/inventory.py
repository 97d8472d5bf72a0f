"""Time a full inventory collection: live on the machine it runs on and replayed from each fixture.

Prints median and p99 in milliseconds. Target: live median under 20 ms.
For scale it also times a bare pyudev + netifaces + psutil sweep, the floor any
collector built on those libraries pays.

    .venv/bin/python bench/inventory.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hardware import collect_inventory, fixture_sources, live_sources  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"


def measure(function: Callable[[], object], runs: int) -> tuple[float, float]:
    function()  # warm caches and imports once
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    p99 = samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))]
    return statistics.median(samples), p99


def bare_sweep() -> None:
    import netifaces
    import psutil
    import pyudev

    context = pyudev.Context()
    for device in context.list_devices(subsystem="block"):
        dict(device.properties)
    for name in netifaces.interfaces():
        netifaces.ifaddresses(name)
    psutil.virtual_memory()
    psutil.cpu_count()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    rows = []
    inventory = collect_inventory(live_sources())
    if inventory.collection_errors:
        print(f"warning: live collection errors: {inventory.collection_errors}")
    rows.append(
        ("live (this machine)", *measure(lambda: collect_inventory(live_sources()), args.runs))
    )
    rows.append(("bare pyudev+netifaces+psutil sweep", *measure(bare_sweep, args.runs)))
    for fixture in sorted(p for p in FIXTURES.iterdir() if (p / "host.json").exists()):
        rows.append(
            (
                f"fixture {fixture.name}",
                *measure(lambda f=fixture: collect_inventory(fixture_sources(f)), args.runs),
            )
        )
    width = max(len(row[0]) for row in rows)
    print(f"{'what':<{width}}  {'median ms':>9}  {'p99 ms':>7}   ({args.runs} runs each)")
    for name, median, p99 in rows:
        print(f"{name:<{width}}  {median:9.2f}  {p99:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
