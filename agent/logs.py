"""Logging that a hostile network cannot flood.

Under a connection storm every refused or timed-out connection is worth one log line,
and the journal (RAM in the ramdisk) and the serial console pay for each of them. So a
repeated message (same logger, level and format string, whatever its arguments) is
written at most once per interval; the next one written after the interval carries how
many were left out. Tracebacks from asyncio's own error paths (a failed ``accept()``
when descriptors run out, a connection's callback failing) go through the same limit,
reduced to one line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

LOG = logging.getLogger("agent.loop")
INTERVAL = 10.0  # seconds between two lines of one kind
MAX_KINDS = 1000  # kinds remembered; a flood of distinct format strings cannot grow it


class RateLimit(logging.Filter):
    """A handler filter: one record per kind (logger, level, format) and interval."""

    def __init__(
        self, interval: float = INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self.kinds: dict[tuple[str, int, str], tuple[float, int]] = {}  # -> last written, left out

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, "rate_limit_passed", None)
        if decided is not None:  # one instance filters every handler: decide once
            return bool(decided)
        passed = self._decide(record)
        record.rate_limit_passed = passed
        return passed

    def _decide(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        last, left_out = self.kinds.get(key, (float("-inf"), 0))
        if now - last < self.interval:
            self.kinds[key] = (last, left_out + 1)
            return False
        if key not in self.kinds and len(self.kinds) >= MAX_KINDS:
            del self.kinds[next(iter(self.kinds))]  # the oldest kind
        self.kinds.pop(key, None)
        self.kinds[key] = (now, 0)
        if left_out:
            record.msg = (
                f"{record.msg} (and {left_out} more like it in the last {now - last:.0f} s)"
            )
        return True


def printable(text: str) -> str:
    """Control characters shown as ``?``, as ps does: what a client or a process chose to
    send stays one line of a log or a table, and cannot forge another."""
    return "".join(char if char.isprintable() else "?" for char in text)


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's errors in one line each, without the traceback (still rate-limited).

    asyncio's default handler logs a traceback per failure: with descriptors exhausted
    its accept loop wrote thousands a second. The listener itself survives (asyncio
    stops accepting for a second and tries again); only the log had to be tamed.
    """
    exception = context.get("exception")
    message = context.get("message", "error in the event loop")
    detail = f"{type(exception).__name__}: {exception}" if exception is not None else ""
    LOG.error("%s %s", message, detail)


def install(handlers: list[logging.Handler], interval: float = INTERVAL) -> RateLimit:
    """Rate-limit what ``handlers`` write, with one count shared between them."""
    limit = RateLimit(interval)
    for handler in handlers:
        handler.addFilter(limit)
    return limit
