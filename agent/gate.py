"""The TLS handshake, done where its failures can be seen, answered, logged and counted.

Tacet accepts plain TCP and runs TLS itself over ``ssl.MemoryBIO`` (``TlsGate``), then
hands the decrypted stream to aiohttp's request handler through ``TlsTransport``. Not
asyncio's SSL transport: it hides failed handshakes (OSErrors it only logs in debug
mode) and closes the connection without sending the alert OpenSSL wrote, so a client
refused for its certificate saw only a closed connection and retried. Here a refused
handshake ends with OpenSSL's alert (``certificate required`` with TLS 1.3, ``handshake
failure`` with 1.2, ``unknown CA``...), and only refusals of the client's credentials
count towards the peer's hold-off: a client that leaves mid-handshake (a port scan, a
health check) is logged, not held against its address.

Under a connection storm the gate is what keeps the agent answering: it admits a
connection only within the caps of ``agent.connections`` (closing the oldest unsettled
one when full), gives a client ``handshake_timeout`` seconds for its handshake and
``header_timeout`` more for a complete request head (slowloris), and creates the TLS
object only when the first bytes arrive, so an idle TCP connection costs little memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .connections import ConnectionTable
from .guard import Guard

LOG = logging.getLogger(__name__)
HANDSHAKE_TIMEOUT = 10.0
HEADER_TIMEOUT = 10.0
HEAD_END = b"\r\n\r\n"
INTERIM = b"HTTP/1.1 1"  # an interim (1xx) answer: the request is still under way
MAX_HANDSHAKE_DELAY = 5.0
LINGER = 2.0  # seconds a refused client has to read our alert before we close
READ_SIZE = 64 * 1024
# OpenSSL's reasons for refusing the client's certificate (or its absence): an
# authentication failure, unlike a client that leaves or speaks something else.
CLIENT_CERTIFICATE_FAILURES = frozenset(
    {"PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED"}
)


@dataclass(frozen=True)
class Timeouts:
    handshake: float = HANDSHAKE_TIMEOUT  # from accepting (or the hold-off) to its end
    header: float = HEADER_TIMEOUT  # for a complete request head, once one has begun


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


def authentication_failure(exc: ssl.SSLError) -> bool:
    """Whether a failed handshake refused the client's certificate (or its absence)."""
    return isinstance(exc, ssl.SSLCertVerificationError) or (
        exc.reason in CLIENT_CERTIFICATE_FAILURES
    )


class TlsGate(asyncio.Protocol):
    """One connection: the (possibly delayed) handshake, then TLS for the application."""

    def __init__(
        self,
        context: ssl.SSLContext,
        app_factory: Callable[[], asyncio.Protocol],
        guard: Guard,
        allowlist: Sequence[str] = (),
        timeouts: Timeouts = Timeouts(),
        table: ConnectionTable | None = None,
    ) -> None:
        self.context = context
        self.timeouts = timeouts
        self.table = table
        self.app_factory = app_factory
        self.guard = guard
        self.allowlist = allowlist
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.tls: ssl.SSLObject | None = None
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.app: asyncio.Protocol | None = None
        self.app_transport: TlsTransport | None = None
        self.state = "waiting"  # waiting, handshake, open, lingering, closed
        self.timer: asyncio.TimerHandle | None = None
        # The request stream as seen for the header timeout: "head" (a request head is
        # due: after the handshake, or once a client that had its answer sends again),
        # "request" (its head is complete), "answered" (the agent has answered).
        self.phase = "head"
        self.head_tail = b""  # the last bytes of the head so far, for HEAD_END across reads
        self.head_timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else "unknown"
        if self.table is not None:
            admission = self.table.admit(self, self.peer)
            if not admission.admitted:
                self.state = "closed"
                self.guard.refuse(self.peer, "connection", admission.reason, hold_off=False)
                transport.abort()
                return
        wait = self.guard.retry_after(self.peer)
        if wait > 0:  # a peer that keeps failing is slowed down, others are not
            self.guard.throttled(self.peer)
            self.timer = asyncio.get_running_loop().call_later(
                min(wait, MAX_HANDSHAKE_DELAY), self._start, transport
            )
        else:
            # At once, without a task: under a storm every connection's cost counts.
            self._start(transport)

    def data_received(self, data: bytes) -> None:
        if self.state == "waiting":
            # Kept for the handshake, and reading paused until it starts. Not paused in
            # connection_made: some Python 3.11 releases (3.11.2 among them) add the
            # reader after that call even when paused, and the ClientHello was dropped.
            self.incoming.write(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        if self.state in ("handshake", "open"):
            self.incoming.write(data)
            if self.state == "handshake":
                self._handshake()
            else:
                self._read()
        # lingering: the refused client's bytes are read and dropped

    def eof_received(self) -> bool | None:
        if self.state == "waiting":  # left during the delay: refused when it ends
            self.incoming.write_eof()
            return True
        if self.state == "handshake":
            self.incoming.write_eof()
            self._handshake()
        elif self.state == "open":
            self.incoming.write_eof()
            self._read()
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == "handshake":
            self._refused(ConnectionResetError(str(exc) if exc else "closed mid-handshake"))
        self.state = "closed"
        self._cancel_timer()
        self._cancel_head_timer()
        if self.table is not None:
            self.table.leave(self)
        if self.app is not None:
            self.app.connection_lost(exc)

    def evict(self) -> None:
        """Closed to make room for a new connection (``ConnectionTable``'s policy)."""
        if self.state != "closed":
            self._cancel_timer()
            self._cancel_head_timer()
            self.guard.refuse(
                self.peer,
                "connection",
                "closed without a request to make room for a new connection",
                hold_off=False,
            )
        self._abort()

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    # -- the handshake -----------------------------------------------------------------
    def _start(self, transport: asyncio.Transport) -> None:
        self.timer = None
        if transport.is_closing() or self.state != "waiting":
            return
        self.state = "handshake"  # the TLS object waits for the client's first bytes
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.timeouts.handshake, self._timed_out)
        transport.resume_reading()
        if self.incoming.pending or self.incoming.eof:
            self._handshake()  # what came during the delay

    def _handshake(self) -> None:
        assert self.transport is not None
        if self.tls is None:
            self.tls = self.context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()  # OpenSSL's alert, for the client to read
            self._refused(exc)
            self._linger()
            return
        self._cancel_timer()
        if self.allowlist:
            names = certificate_names(self.tls.getpeercert())
            if not allowed(names, self.allowlist):
                # The session tickets OpenSSL wrote are dropped, not sent: a TLS 1.3 client
                # then sees its new connection end without one, i.e. not accepted.
                self.outgoing.read()
                self.guard.refuse(
                    self.peer, "allowlist", f"client certificate {names} not in the allowlist"
                )
                self.state = "closed"
                self.transport.close()
                return
        self._flush()
        self.state = "open"
        self._start_head_timer()
        app = self.app_factory()
        self.app = app
        self.app_transport = TlsTransport(self)
        app.connection_made(self.app_transport)
        self._read()  # records that came with the end of the handshake

    def _refused(self, exc: BaseException) -> None:
        self.state = "closed"
        self._cancel_timer()
        # Only a refused client certificate counts towards the hold-off: not a client that
        # left mid-handshake, timed out, refused our certificate or spoke no TLS.
        credentials = isinstance(exc, ssl.SSLError) and authentication_failure(exc)
        self.guard.refuse(self.peer, "handshake", _reason(exc), hold_off=credentials)

    def _linger(self) -> None:
        """Send what is written (the alert) and the end of our stream; read and drop what
        the client still sends, so that closing does not reset the connection under the
        alert before the client has read it."""
        assert self.transport is not None
        if self.transport.is_closing():
            return
        self.state = "lingering"
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.timer = asyncio.get_running_loop().call_later(LINGER, self.transport.close)

    def _timed_out(self) -> None:
        self.timer = None
        if self.state == "handshake" and self.transport is not None:
            self._refused(TimeoutError())
            self.transport.abort()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- the open connection -----------------------------------------------------------
    def _read(self) -> None:
        assert self.tls is not None and self.app is not None
        while self.state == "open":
            try:
                data = self.tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                data = b""
            except ssl.SSLError as exc:  # broken records or an alert from the client
                LOG.info("TLS error from %s: %s", self.peer, exc.reason or exc)
                self._abort()
                return
            if not data:  # close_notify or the end of the stream
                if not self.app.eof_received() and self.app_transport is not None:
                    self.app_transport.close()
                return
            self._watch_head(data)
            self.app.data_received(data)
        self._flush()  # reading can answer the client (a key update)

    # -- the request head's deadline ---------------------------------------------------
    def _watch_head(self, data: bytes) -> None:
        """Note where a request head ends (its blank line); a new one begins when a
        client that had its answer sends again."""
        if self.phase == "answered":
            self.phase = "head"
            self.head_tail = b""
            self._start_head_timer()
        if self.phase != "head":
            return
        seen = self.head_tail + data
        if HEAD_END in seen:
            self.phase = "request"
            self._cancel_head_timer()
            if self.table is not None:
                self.table.settled(self)
        else:
            self.head_tail = seen[-(len(HEAD_END) - 1) :]

    def answered(self) -> None:
        """The application wrote (part of) an answer."""
        if self.phase != "answered":
            self.phase = "answered"
            self._cancel_head_timer()
            if self.table is not None:
                self.table.settled(self)

    def _start_head_timer(self) -> None:
        self._cancel_head_timer()
        loop = asyncio.get_running_loop()
        self.head_timer = loop.call_later(self.timeouts.header, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.state == "open" and self.phase == "head":
            self.guard.refuse(
                self.peer,
                "connection",
                f"no complete request head within {self.timeouts.header:g} s",
                hold_off=False,
            )
            self._abort()

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _abort(self) -> None:
        self.state = "closed"
        if self.transport is not None:
            self.transport.abort()


class TlsTransport(asyncio.Transport):
    """The application's side of a ``TlsGate``: plaintext in, TLS records out."""

    def __init__(self, gate: TlsGate) -> None:
        super().__init__()
        self.gate = gate
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        tls = self.gate.tls
        assert tls is not None and self.gate.transport is not None
        if name == "peercert":
            return tls.getpeercert()
        if name == "ssl_object":
            return tls
        if name == "sslcontext":
            return self.gate.context
        if name == "cipher":
            return tls.cipher()
        return self.gate.transport.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self.is_closing() or self.gate.tls is None or self.gate.state != "open":
            return
        if not bytes(data[:12]).startswith(INTERIM):  # "100 Continue" asks for the body
            self.gate.answered()
        self.gate.tls.write(data)
        self.gate._flush()

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def is_closing(self) -> bool:
        raw = self.gate.transport
        return self.closing or raw is None or raw.is_closing()

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.gate.tls is not None and self.gate.state == "open":
            with contextlib.suppress(ssl.SSLError):
                self.gate.tls.unwrap()  # close_notify
            self.gate._flush()
        self.gate.state = "closed"
        if self.gate.transport is not None:
            self.gate.transport.close()

    def abort(self) -> None:
        self.closing = True
        self.gate._abort()

    def pause_reading(self) -> None:
        if self.gate.transport is not None:
            self.gate.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.gate.transport is not None:
            self.gate.transport.resume_reading()

    def is_reading(self) -> bool:
        return self.gate.transport is not None and self.gate.transport.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.gate.transport is not None:
            self.gate.transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        raw = self.gate.transport
        return raw.get_write_buffer_size() if raw is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        raw = self.gate.transport
        return raw.get_write_buffer_limits() if raw is not None else (0, 0)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self.gate.app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.gate.app is not None
        return self.gate.app


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate rejected: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        if exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no client certificate"
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    return f"{type(exc).__name__}: {exc}"
