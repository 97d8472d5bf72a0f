"""One long-lived asyncio loop per conductor process, for ironic's worker threads.

ironic runs periodic tasks in futurist worker threads (oslo.service's threading
backend, no eventlet). Tacet's client is asyncio; a new event loop per poll would
throw away every kept-alive connection and TLS session. So one daemon thread owns
one loop for the life of the process, and threads hand it coroutines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Abandoned(Exception):
    """``run`` gave up on its coroutine because its ``abandon`` check said so."""


class LoopThread:
    """A daemon thread running one event loop; ``run`` waits for a coroutine's result."""

    def __init__(self, name: str = "tacet-poller") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(
        self,
        work: Coroutine[Any, Any, T],
        timeout: float | None = None,
        abandon: Callable[[], bool] | None = None,
        check_every: float = 0.5,
    ) -> T:
        """Run ``work`` on the loop from any other thread; cancelled on timeout, or
        (raising :class:`Abandoned`) as soon as ``abandon()``, asked every
        ``check_every`` seconds, is true: a conductor that stops does not wait out a
        sweep's polls."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopThread.run called from its own loop: it would deadlock")
        future = asyncio.run_coroutine_threadsafe(work, self.loop)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = check_every if abandon is not None else None
            if deadline is not None:
                left = deadline - time.monotonic()
                wait = left if wait is None else min(wait, left)
            try:
                return future.result(max(wait, 0.0) if wait is not None else None)
            except concurrent.futures.TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    future.cancel()
                    raise
                if abandon is not None and abandon():
                    future.cancel()
                    raise Abandoned() from None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


_shared: LoopThread | None = None
_shared_lock = threading.Lock()


def shared_loop() -> LoopThread:
    """The process's loop thread, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.alive:
            _shared = LoopThread()
        return _shared
