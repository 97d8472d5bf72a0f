"""Giving memory back to the system once a connection storm is over.

A storm leaves the heap full of freed connection objects; glibc's allocator keeps
those pages (RSS stays at its peak) unless asked to return them. In a ramdisk the
RAM is the machine's, and an agent that stays large after each storm is one storm
closer to the OOM killer.
"""

from __future__ import annotations

import gc

from wire.heap import release_free_memory


def give_back() -> bool:
    """Collect cycles and return free heap pages to the system; False without glibc."""
    gc.collect()
    return release_free_memory() is not None
