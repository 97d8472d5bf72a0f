"""The TLS handshake, done where its failures can be seen, logged and counted.

asyncio's own SSL server hides failed handshakes (they are OSErrors it only logs in
debug mode). Tacet accepts plain TCP, runs the handshake itself with ``start_tls``,
checks the client certificate against the allowlist, and only then hands the
connection to aiohttp's request handler.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from .guard import Guard

LOG = logging.getLogger(__name__)
HANDSHAKE_TIMEOUT = 10.0
MAX_HANDSHAKE_DELAY = 5.0


def certificate_names(peercert: dict[str, Any] | None) -> list[str]:
    """Subject common names and SAN DNS names of a verified peer certificate."""
    if not peercert:
        return []
    names = [
        value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    names += [value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"]
    return names


def allowed(names: Sequence[str], patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in patterns)


class TlsGate(asyncio.Protocol):
    def __init__(
        self,
        context: ssl.SSLContext,
        app_factory: Callable[[], asyncio.Protocol],
        guard: Guard,
        allowlist: Sequence[str] = (),
    ) -> None:
        self.context = context
        self.app_factory = app_factory
        self.guard = guard
        self.allowlist = allowlist
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.app: asyncio.Protocol | None = None
        self.early: list[bytes] = []
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else "unknown"
        transport.pause_reading()
        asyncio.get_running_loop().create_task(self._handshake(transport))

    async def _handshake(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        wait = self.guard.retry_after(self.peer)
        if wait > 0:  # a peer that keeps failing is slowed down, others are not
            self.guard.throttled(self.peer)
            await asyncio.sleep(min(wait, MAX_HANDSHAKE_DELAY))
            if transport.is_closing():
                return
        try:
            tls = await loop.start_tls(
                transport,
                self,
                self.context,
                server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.guard.refuse(self.peer, "handshake", _reason(exc))
            transport.abort()
            return
        if tls is None:
            return
        if self.allowlist:
            names = certificate_names(tls.get_extra_info("peercert"))
            if not allowed(names, self.allowlist):
                self.guard.refuse(
                    self.peer, "allowlist", f"client certificate {names} not in the allowlist"
                )
                tls.abort()
                return
        app = self.app_factory()
        self.app = app
        tls.set_protocol(app)
        app.connection_made(tls)
        for data in self.early:  # bytes that arrived with the end of the handshake
            app.data_received(data)
        self.early.clear()
        if self.eof:
            app.eof_received()

    def data_received(self, data: bytes) -> None:
        if self.app is not None:
            self.app.data_received(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool | None:
        if self.app is not None:
            return self.app.eof_received()
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.app is not None:
            self.app.connection_lost(exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate rejected: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    return f"{type(exc).__name__}: {exc}"
