"""One line per answered request, when the operator asks for it (``access-log``).

Off by default: the ramdisk's journal is RAM, and a conductor polling every 10 s would
add a line each time. On, each line says who asked what and how it went: the peer, the
agent's address it reached, the method and path (never the query, which may carry
``agent_token``), the status, the time taken and the client's ``User-Agent`` (Tacet's
conductors name themselves there, so a site with several can see which one drives a
node). Requests refused before they reach the API (TLS, caps, hold-off) are not here:
``agent.logs`` counts those.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .logs import printable

LOGGER = logging.getLogger("agent.access")
MAX_AGENT = 200  # characters of User-Agent (and path) kept; the rest is the client's business


def _local_address(request: web.BaseRequest) -> str:
    """The agent's address and port the request reached ("-" once the socket is gone)."""
    transport = request.transport
    try:
        sockname = transport.get_extra_info("sockname") if transport is not None else None
    except OSError:  # the connection was closed with the answer
        sockname = None
    return f"{sockname[0]}:{sockname[1]}" if sockname else "-"


class AccessLog(AbstractAccessLogger):
    """aiohttp's access-log hook, with the fields above as the record's ``extra`` too
    (``peer``, ``local``: the address and port it reached, ``method``, ``path``,
    ``status``, ``user_agent``)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        peer = request.remote or "-"
        agent = printable(request.headers.get("User-Agent", "-")[:MAX_AGENT])
        path = printable(request.rel_url.path[:MAX_AGENT])
        local = _local_address(request)
        self.logger.info(
            '%s -> %s "%s %s" %d %.0f ms "%s"',
            peer,
            local,
            request.method,
            path,
            response.status,
            time * 1000,
            agent,
            extra={
                "peer": peer,
                "local": local,
                "method": request.method,
                "path": path,
                "status": response.status,
                "user_agent": agent,
            },
        )
