"""A deadline for request bodies: a client that sends a request head, then dribbles its
body (or stops mid-way through a chunked one), must not hold its connection for ever.

The gate (``agent.gate``) times the handshake and the request head; once a head is
complete the connection is *settled* and never gives way to a newcomer, so a body sent a
byte at a time would hold one of the agent's slots for as long as the client likes. The
middleware here gives the whole body ``body-timeout`` seconds from the moment its head
was parsed (aiohttp calls the handler then, with the body still streaming in). If the
body is not complete by then, the refusal is logged (one line, rate-limited, the path
without its query so no token), counted as ``connection`` in ``/v1/status``, and the
connection closed: with a ``408`` fault when no answer has been written yet, else
without one (the agent had answered and aiohttp was reading the rest of the body to
drop it). A body whose framing breaks is aiohttp's parse error, handled in
``agent.malformed``; one that ends early is a 400 from the handler that reads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from .guard import Guard
from .malformed import answer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BodyWatch:
    """One request's body deadline."""

    def __init__(self, request: web.Request, timeout: float, guard: Guard) -> None:
        self.request = request
        self.timeout = timeout
        self.guard = guard
        self.handling = True  # the handler has not returned: no answer written yet
        self.expired = False
        self.timer = asyncio.get_running_loop().call_later(timeout, self._expire)

    def complete(self) -> bool:
        """The body has arrived, or failed in a way someone else answers."""
        content = self.request.content
        return content.is_eof() or content.exception() is not None

    def handler_done(self) -> None:
        """Past the handler the deadline still holds, while aiohttp drains an unread body."""
        self.handling = False
        if self.complete():
            self.timer.cancel()

    def _expire(self) -> None:
        transport = self.request.transport
        if self.complete() or transport is None or transport.is_closing():
            return
        self.expired = True
        self.guard.refuse(
            self.request.remote or "unknown",
            "connection",
            f"{self.request.method} {self.request.path}: "
            f"no complete request body within {self.timeout:g} s",
            hold_off=False,
        )
        if self.handling:
            message = f"Request body not received within {self.timeout:g} s"
            transport.write(answer(message, status=408))
        transport.close()


def body_deadline(timeout: float, guard: Guard) -> Middleware:
    """The middleware; outside every handler that reads a body, inside the JSON faults."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.body_exists or request.content.is_eof():
            return await handler(request)
        watch = BodyWatch(request, timeout, guard)
        try:
            return await handler(request)
        except ConnectionResetError:
            if not watch.expired:
                raise
            # Closed by the deadline (and answered, if it could be): nothing to send.
            return web.Response(status=408)
        finally:
            watch.handler_done()

    return middleware
