"""Giving free heap memory back (the plugin after each sweep, the agent after a storm),
against this machine's C library."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from wire.heap import limit_heaps, release_free_memory

MIB = 1024 * 1024


def test_freed_memory_below_a_live_block_goes_back_to_the_system() -> None:
    """100 MiB freed in 1 KiB blocks under a block still in use: free() alone cannot
    shrink the heap past that block, release_free_memory gives the pages back."""
    process = psutil.Process()
    blocks = [bytes(1024) for _ in range(100 * 1024)]  # malloc'd, above pymalloc's 512
    pin = bytes(1024)  # allocated after them: the heap's top stays in use
    grown = process.memory_info().rss
    del blocks
    freed = process.memory_info().rss
    released = release_free_memory()
    trimmed = process.memory_info().rss
    assert released is True
    assert grown - freed < 20 * MIB, (grown, freed)  # free() kept most of it
    assert freed - trimmed > 60 * MIB, (freed, trimmed)
    assert pin


HEAPS_USED = """
import sys, threading
from wire.heap import limit_heaps, _glibc_function

if sys.argv[1] != "0":
    assert limit_heaps(int(sys.argv[1])) is True
start = threading.Barrier(8)
done = threading.Barrier(8)


def work() -> None:
    start.wait()  # all alive at once: glibc hands each its own heap when it may
    blocks = [bytes(4096) for _ in range(2000)]
    done.wait()
    del blocks


threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
_glibc_function("malloc_stats")()
"""


def heaps_used(limit: int) -> int:
    """The heaps glibc's malloc_stats lists after 8 threads allocated at once."""
    result = subprocess.run(
        [sys.executable, "-c", HEAPS_USED, str(limit)],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"},
        cwd=Path(__file__).resolve().parent.parent,
    )
    return sum(1 for line in result.stderr.splitlines() if line.startswith("Arena "))


def test_limit_heaps_keeps_threads_to_that_many_heaps() -> None:
    assert heaps_used(0) >= 4  # glibc's default: a heap per thread, up to 8 per core
    assert heaps_used(2) <= 2


def test_an_operators_malloc_arena_max_stands(monkeypatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_heaps(2) is None
