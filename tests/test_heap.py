"""Giving free heap memory back (the plugin after each sweep, the agent after a storm),
against this machine's C library."""

from __future__ import annotations

import psutil

from wire.heap import release_free_memory

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
