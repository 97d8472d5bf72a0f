"""Rate-limited logging: one line per kind and interval, with the count left out."""

from __future__ import annotations

import asyncio
import errno
import logging

from agent import logs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def capture(limit: logs.RateLimit, name: str = "agent.test") -> tuple[logging.Logger, list[str]]:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.addFilter(limit)
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, lines


def test_repeated_messages_are_written_once_per_interval_with_a_count():
    clock = Clock()
    logger, lines = capture(logs.RateLimit(10.0, clock))
    for n in range(1000):
        logger.warning("refused connection from %s: %s", f"10.0.0.{n % 250}", "full")
    assert lines == ["refused connection from 10.0.0.0: full"]
    clock.now += 10.0
    logger.warning("refused connection from %s: %s", "10.0.0.9", "full")
    assert (
        lines[1] == "refused connection from 10.0.0.9: full (and 999 more like it in the last 10 s)"
    )
    logger.warning("another kind %s", 1)
    assert len(lines) == 3


def test_one_filter_on_two_handlers_decides_once_per_record():
    clock = Clock()
    limit = logs.RateLimit(10.0, clock)
    logger, first = capture(limit, "agent.test.two")
    second: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            second.append(self.format(record))

    other = Collect()
    other.addFilter(limit)
    logger.addHandler(other)
    for _ in range(3):
        logger.warning("same %s", "thing")
    assert first == second == ["same thing"]


def test_the_kinds_remembered_are_bounded():
    limit = logs.RateLimit(10.0, Clock())
    logger, lines = capture(limit, "agent.test.kinds")
    for n in range(logs.MAX_KINDS + 50):
        logger.warning(f"distinct {n}")  # distinct format strings on purpose
    assert len(limit.kinds) == logs.MAX_KINDS and len(lines) == logs.MAX_KINDS + 50


def test_asyncio_accept_errors_become_one_line_without_a_traceback():
    limit = logs.RateLimit(10.0, Clock())
    _, lines = capture(limit, logs.LOG.name)
    loop = asyncio.new_event_loop()
    try:
        loop.set_exception_handler(logs.loop_exception_handler)
        for _ in range(5000):  # what a listener out of descriptors reports, again and again
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                }
            )
    finally:
        loop.close()
    assert lines == [
        "socket.accept() out of system resource OSError: [Errno 24] Too many open files"
    ]
