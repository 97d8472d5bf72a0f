"""Ordered worker threads, so downloading, hashing, decompressing and writing overlap.

A naive loop (read a chunk, hash it, write it, repeat) leaves the network idle while the
disk writes and the disk idle while the network reads. Each :class:`Stage` is one
thread applying a function to items in the order they were put, with a bounded number of
bytes pending: the event loop keeps reading the socket while earlier chunks are hashed
and written. hashlib, zlib, lzma and ``os.pwrite`` release the GIL, so the stages really
run in parallel.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

DEFAULT_BYTES = 32 * 1024 * 1024


class Stage:
    """One worker thread; ``put`` from one producer only (the loop or one other stage).

    The bound is in bytes, not items: it must stay above the writer's block size, or the
    disk idles while the queue refills after every large write.
    """

    def __init__(
        self, fn: Callable[[Any], None], name: str, max_bytes: int = DEFAULT_BYTES
    ) -> None:
        self.fn = fn
        self.max_bytes = max_bytes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tacet-{name}")
        self._pending: collections.deque[tuple[Future[None], int]] = collections.deque()
        self._bytes = 0

    def _full(self) -> bool:
        return bool(self._pending) and self._bytes >= self.max_bytes

    def _pop(self) -> Future[None]:
        future, size = self._pending.popleft()
        self._bytes -= size
        return future

    def _submit(self, item: Any) -> None:
        size = len(item) if item is not None else 0
        self._pending.append((self._pool.submit(self.fn, item), size))
        self._bytes += size

    async def put(self, item: Any) -> None:
        """Queue ``item``; waits (without blocking the loop) while the stage is full."""
        while self._full():
            await asyncio.wrap_future(self._pop())
        self._submit(item)

    def put_blocking(self, item: Any) -> None:
        """Queue ``item`` from another worker thread."""
        while self._full():
            self._pop().result()
        self._submit(item)

    async def drain(self) -> None:
        """Wait until every queued item is processed; raises the first error."""
        while self._pending:
            await asyncio.wrap_future(self._pop())

    async def discard(self) -> None:
        """Let queued items finish and forget their errors (the stream starts over)."""
        while self._pending:
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self._pop())

    def close(self) -> None:
        for future, _size in self._pending:
            future.cancel()
        self._pending.clear()
        self._bytes = 0
        self._pool.shutdown(wait=True)
