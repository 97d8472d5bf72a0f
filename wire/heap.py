"""Giving free heap memory back to the operating system (glibc's ``malloc_trim``).

Both sides free much more than they keep: the agent after a connection storm, the
conductor's plugin after each sweep (its TLS work above all, and ironic's own work on
the answers, in many threads). glibc keeps freed memory in its heaps for reuse, one
heap per thread up to 8 per core, so RSS stays near the peak unless asked.
``malloc_trim`` gives free pages at the top of every heap, and whole free pages inside
them, back. A C library without it (musl) is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    return trim


def release_free_memory() -> bool | None:
    """Ask the C library to give free heap memory back: True if it gave some, False if
    it had none to give, None where the C library cannot (not glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return None
    return bool(trim(0))
