"""Requests aiohttp's parser refuses: a fixed JSON fault, one log line, a counted failure.

aiohttp answers a request it cannot parse (an over-long header line, a bad request line,
a control character in a header) itself, before any middleware runs: a text/plain 400
quoting the offending bytes, and a logged traceback quoting them too. Those bytes can be
an ``Authorization: Bearer`` token. Its one documented hook on that path is the server's
``logger`` (``Application(handler_args=...)``), called before that answer is built.
``MalformedRequests`` is that logger: it logs one line naming the kind of error and the
peer (never the bytes), counts the refusal towards the peer's hold-off (a token may have
been in it), writes the fixed answer and closes the connection; aiohttp's own answer then
finds the connection closed and is dropped.

The logger learns which connection from ``CONNECTION``: ``Connection``, wrapped around
aiohttp's protocol, sets it while aiohttp's ``connection_made`` creates the task that
serves the connection, and an asyncio task keeps the context it was created in.
(``web.RequestHandler.handle_error`` is not a documented extension point, so it is not
overridden.)
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp.http import HttpProcessingError
from aiohttp.http_exceptions import LineTooLong

from wire.protocol import fault

from .guard import Guard

CONNECTION: contextvars.ContextVar[asyncio.Transport | None] = contextvars.ContextVar(
    "tacet_connection", default=None
)
PARENT = logging.getLogger("agent")


REASONS = {400: "Bad Request", 408: "Request Timeout"}


def answer(message: str, status: int = 400) -> bytes:
    """The whole HTTP/1.1 response: a fault, nothing of the request in it."""
    body = json.dumps(fault(status, message)).encode()
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def describe(exc: HttpProcessingError, max_line: int) -> str:
    """What was wrong, in words of our own: aiohttp's message quotes the request."""
    if isinstance(exc, LineTooLong):
        return f"Bad HTTP request: a request or header line is too long (limit {max_line} bytes)"
    return "Bad HTTP request: malformed request line, header or chunked framing"


class MalformedRequests(logging.Logger):
    """aiohttp's server logger (``logger=``): parse errors handled as above, the rest
    logged as usual under ``agent.http``."""

    def __init__(self, guard: Guard, max_line: int = 8190) -> None:
        super().__init__("agent.http")
        self.parent = PARENT  # not in logging's registry, so its parent is set here
        self.guard = guard
        self.max_line = max_line

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if not self._refuse(args, exc_info):
            super().exception(msg, *args, exc_info=exc_info, **kwargs)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self._refuse(args, kwargs.get("exc_info")):
            super().debug(msg, *args, **kwargs)

    def _refuse(self, args: tuple[Any, ...], exc_info: Any) -> bool:
        """Whether this was a parse error, now answered and counted."""
        if not isinstance(exc_info, HttpProcessingError):
            return False
        transport = CONNECTION.get()
        peername = transport.get_extra_info("peername") if transport is not None else None
        peer = str(peername[0]) if peername else str(args[0] if args else "unknown")
        reason = describe(exc_info, self.max_line)
        self.guard.refuse(peer, "request", f"{reason} ({type(exc_info).__name__})")
        if transport is not None and not transport.is_closing():
            transport.write(answer(reason))
            transport.close()
        return True


class Connection(asyncio.Protocol):
    """aiohttp's protocol for one connection, with ``CONNECTION`` set for its task."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        token = CONNECTION.set(transport)
        try:
            self.protocol.connection_made(transport)
        finally:
            CONNECTION.reset(token)

    def data_received(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def eof_received(self) -> bool | None:
        return self.protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()


def connections(factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
    """Wrap a protocol factory (aiohttp's ``Server``) so its connections are marked."""
    return lambda: Connection(factory())
