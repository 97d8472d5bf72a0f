"""Giving memory back to the system once a connection storm is over.

A storm leaves the heap full of freed connection objects; glibc's allocator keeps
those pages (RSS stays at its peak) unless asked to return them. In a ramdisk the
RAM is the machine's, and an agent that stays large after each storm is one storm
closer to the OOM killer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

LOG = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    return trim


MALLOC_TRIM = _malloc_trim()


def give_back() -> bool:
    """Collect cycles and return free heap pages to the system; False without glibc."""
    gc.collect()
    if MALLOC_TRIM is None:
        return False
    MALLOC_TRIM(0)
    return True
