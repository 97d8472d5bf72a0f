"""Giving free heap memory back to the operating system (glibc's ``malloc_trim``).

Both sides free much more than they keep: the agent after a connection storm, the
conductor's plugin after each sweep (its TLS work above all, and ironic's own work on
the answers, in many threads). glibc keeps freed memory in its heaps for reuse, one
heap per thread up to 8 per core, so RSS stays near the peak unless asked.
``malloc_trim`` gives free pages at the top of every heap, and whole free pages inside
them, back. Fewer heaps (``limit_heaps``) leave less of it stranded in the first place.
A C library without these (musl) is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Any

M_ARENA_MAX = -8  # mallopt's parameter number for the heap limit (glibc's malloc.h)


@functools.cache
def _glibc_function(name: str) -> Any:
    """The C library's ``name``, or None where it has none (musl: no malloc_trim)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool | None:
    """Ask the C library to give free heap memory back: True if it gave some, False if
    it had none to give, None where the C library cannot (not glibc)."""
    trim = _glibc_function("malloc_trim")
    if trim is None:
        return None
    return bool(trim(0))


def limit_heaps(count: int) -> bool | None:
    """Let glibc make at most ``count`` heaps (arenas) for threads, where it would make
    up to 8 per core: a thread then shares a heap instead of stranding freed memory in
    its own. Affects heaps made from now on, so call it before the threads start
    allocating. True when set; None where the C library cannot, or when the process was
    started with ``MALLOC_ARENA_MAX`` (the operator's choice stands)."""
    if count < 1 or "MALLOC_ARENA_MAX" in os.environ:
        return None
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return None
    return bool(mallopt(M_ARENA_MAX, count))
