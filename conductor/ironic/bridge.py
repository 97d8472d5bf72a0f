"""One long-lived asyncio loop per conductor process, for ironic's worker threads.

ironic runs periodic tasks in futurist worker threads (oslo.service's threading
backend, no eventlet). Tacet's client is asyncio; a new event loop per poll would
throw away every kept-alive connection and TLS session. So one daemon thread owns
one loop for the life of the process, and threads hand it coroutines.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """A daemon thread running one event loop; ``run`` waits for a coroutine's result."""

    def __init__(self, name: str = "tacet-poller") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, work: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``work`` on the loop from any other thread; cancelled on timeout."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopThread.run called from its own loop: it would deadlock")
        future = asyncio.run_coroutine_threadsafe(work, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

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
