"""The conductor's HTTP/1.1 over TLS to agents: connections, a pool, response parsing.

HTTP is h11's (sans I/O): it frames requests and responses and refuses most malformed
ones. What h11 leaves to its user is checked here (``ResponseReader``): both
Content-Length and Transfer-Encoding, how many header fields, ASCII-only numbers, the
body size as it arrives (each call has its own limit), how many 1xx answers, and
``Connection: close`` in any Connection header.

TLS is done by ``Connection`` itself with ``ssl.MemoryBIO`` over a plain TCP transport,
not by asyncio's SSL transport: the connection then holds no 256 KiB read buffer (a
conductor keeps up to a thousand connections open; all share one, see ``_Landing``),
it can offer the TLS session it got
last time from the same agent (``session=``, an abbreviated handshake), and it sees the
TLS alert or the close with which an agent refuses our client certificate.

aiohttp's client was the poller's cost (its per-request machinery took most of the CPU
of a kept-alive 1,000-agent inventory sweep): requests go through this module instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import h11

from .tls import Pinned, ResumingContext, conductor_context, pinning_context

MAX_HEAD = 64 * 1024  # status line and header fields
MAX_HEADERS = 100  # header fields in one response
MAX_BODY = 64 * 1024 * 1024  # the ceiling for any answer; each call has its own limit
MAX_INFORMATIONAL = 10  # 1xx answers before the real one
READ_SIZE = 64 * 1024  # bytes taken from the socket, and plaintext from TLS, per read
MAX_MESSAGE = 200  # characters of the agent's bytes shown in an error message

DEFAULT_KEPT_ALIVE = 1000
POLLER_GC_THRESHOLD = 20_000


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` safe to print on one line: control characters (CR, LF, ESC, ...) and other
    unprintable ones escaped, at most ``limit`` characters. For anything an agent sent."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BadHttp(Exception):
    """The bytes from the agent are not an HTTP/1.1 response we accept."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class TooLarge(BadHttp):
    """The answer is larger than the limit of its call: refused as the bytes arrive."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"response body larger than {limit} bytes")
        self.limit = limit


class Dropped(Exception):
    """The connection ended before the whole answer arrived (the request may have run)."""


class ClosedAfterHandshake(Dropped):
    """The agent ended a new TLS 1.3 connection after the handshake, before any answer and
    before sending a session ticket: it did not accept the connection.

    With TLS 1.3 the client's handshake is complete before the server has checked the
    client certificate: this is how a refused (or missing) client certificate looks when
    the agent sends no alert."""


class NotSent(Exception):
    """Connecting failed: nothing was sent."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; the last value of a repeated header
    body: bytes
    keep_alive: bool  # the agent leaves the connection open after this answer


def _h11_message(exc: Exception) -> str:
    # h11 shows the offending bytes as bytearray(b'...'): keep the b'...'
    return re.sub(r"bytearray\((b'.*?')\)", r"\1", str(exc)) or type(exc).__name__


class ResponseReader:
    """One request's bytes, and its response parsed as it arrives (sans I/O).

    h11 does the framing; the checks around it are ours (see the module docstring).
    One per request: a kept-alive connection starts a new one for its next request, so
    nothing left over from one answer can be read as the next.
    """

    def __init__(
        self,
        method: str = "GET",
        target: str = "/",
        headers: Iterable[tuple[str, str]] = (("Host", "agent"),),
        body: bytes | None = None,
        max_body: int = MAX_BODY,
    ) -> None:
        self.method = method
        self.max_body = max_body
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        fields = list(headers)
        if body is not None:
            fields.append(("Content-Length", str(len(body))))
        try:
            parts = [self._h11.send(h11.Request(method=method, target=target, headers=fields))]
            if body:
                parts.append(self._h11.send(h11.Data(data=body)))
            parts.append(self._h11.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:
            raise ValueError(f"cannot send this request: {exc}") from None
        self.request = b"".join(part for part in parts if part)
        self.status = 0  # until the (final) head has arrived
        self._head_seen = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = True
        self.body = bytearray()
        self.informational = 0
        self.response: Response | None = None

    def feed(self, data: bytes) -> Response | None:
        """Take bytes; the response once it is complete, else None. BadHttp when the bytes
        are not an acceptable answer."""
        if self.response is not None:
            raise BadHttp("data after the end of the response")
        if not data:
            return None  # to h11, no bytes would mean the end of the stream
        if self.status == 0:  # h11 limits only a head that arrives in pieces: we count
            room = MAX_HEAD - self._head_seen
            self._head_seen += len(data)
            if len(data) > room:
                if room > 0:
                    self._h11.receive_data(data[:room])
                if self._events() is not None:
                    raise BadHttp("data after the end of the response")
                if self.status == 0:
                    raise BadHttp(f"response head larger than {MAX_HEAD} bytes")
                data = data[room:]
        self._h11.receive_data(data)
        return self._events()

    def feed_eof(self) -> Response | None:
        """The connection ended: the response if it is complete now, else None."""
        if self.response is not None:
            return self.response
        try:
            self._h11.receive_data(b"")
            return self._events()
        except BadHttp:
            return None  # cut short: the caller reports a dropped connection

    def _events(self) -> Response | None:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if exc.error_status_hint == 431:  # h11's max_incomplete_event_size
                    raise BadHttp(f"response head larger than {MAX_HEAD} bytes") from None
                raise BadHttp(_h11_message(exc)) from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return None
            if isinstance(event, h11.Response):
                self._head(event)
            elif isinstance(event, h11.Data):
                if len(self.body) + len(event.data) > self.max_body:
                    raise TooLarge(self.max_body)  # before keeping what is past the limit
                self.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self._h11.trailing_data[0]:
                    raise BadHttp("data after the end of the response")
                if self._h11.their_state is not h11.DONE:
                    self.keep_alive = False  # h11 saw Connection: close or HTTP/1.0
                body = bytes(self.body)
                self.response = Response(self.status, self.headers, body, self.keep_alive)
                return self.response
            elif isinstance(event, h11.ConnectionClosed):
                return None
            elif isinstance(event, h11.InformationalResponse):  # the real answer follows
                self.informational += 1
                if self.informational > MAX_INFORMATIONAL:
                    raise BadHttp(f"more than {MAX_INFORMATIONAL} informational (1xx) answers")

    def _head(self, event: h11.Response) -> None:
        if len(event.headers) > MAX_HEADERS:
            raise BadHttp(f"more than {MAX_HEADERS} header fields")
        headers: dict[str, str] = {}
        connection: list[str] = []
        for raw_name, raw_value in event.headers:
            name, value = raw_name.decode("ascii"), raw_value.decode("latin-1")
            if name == "connection":
                connection += [token.strip().lower() for token in value.split(",")]
            headers[name] = value
        if "content-length" in headers and "transfer-encoding" in headers:
            raise BadHttp("both Content-Length and Transfer-Encoding (ambiguous length)")
        length = headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):  # h11 checks this too
                raise BadHttp(f"bad Content-Length {length!r}")
            if int(length) > self.max_body:
                raise TooLarge(self.max_body)
        encoding = headers.get("content-encoding", "identity")
        if encoding.lower() != "identity":  # we never send Accept-Encoding
            raise BadHttp(f"unrequested Content-Encoding {encoding!r}")
        self.status, self.headers = event.status_code, headers
        self.keep_alive = event.http_version == b"1.1" and "close" not in connection


def tune_gc_for_polling(
    agents: int, max_kept_alive: int = DEFAULT_KEPT_ALIVE, threshold: int = POLLER_GC_THRESHOLD
) -> bool:
    """Run Python's cycle collector less often when every agent keeps its connection.

    A request allocates many short-lived objects; with the default of a collection per
    700 new objects, a sweep with hundreds of requests in flight collects often and
    promotes live in-flight objects into full collections (at 1,000 kept-alive agents,
    measured with bench/fleet.py). Not when agents reconnect per request (more than
    ``max_kept_alive``): each closed TLS connection can be cyclic garbage holding OpenSSL
    memory, and collecting it later costs memory. Process-wide; ``tacet provision``
    calls it. Returns whether the threshold was raised.
    """
    if agents > max_kept_alive:
        return False
    gc.set_threshold(threshold, *gc.get_threshold()[1:])
    return True


class _Landing(threading.local):
    """Where a thread's connections receive bytes: one buffer for all of them.

    What the socket put there is copied into the connection's TLS input (or, once
    decrypted, into its HTTP reader) in the same callback, with no await in between, so
    the connections of one event loop can share it. Without it every read would allocate
    its own: asyncio's plain transport receives into a new 256 KiB bytes object per read.
    """

    def __init__(self) -> None:
        self.socket = memoryview(bytearray(READ_SIZE))
        self.plaintext = memoryview(bytearray(READ_SIZE))


_landing = _Landing()


class Connection(asyncio.BufferedProtocol):
    """One TLS connection to an agent, one request at a time (HTTP/1.1, no pipelining).

    TLS runs here over ``ssl.MemoryBIO`` (see the module docstring); ``ready`` is done
    when the handshake is, with the handshake's ``ssl.SSLError`` if it failed.
    """

    def __init__(
        self,
        pool: Pool,
        key: tuple[Any, ...],
        context: ssl.SSLContext | Pinned,
        server_hostname: str,
        session_name: str | None = None,
    ) -> None:
        self.pool = pool
        self.pinned: Pinned | None = None
        if isinstance(context, Pinned):
            self.pinned, context = context, context.context
        self.key = key
        self.server_hostname = server_hostname
        # Sessions are remembered per host we connect to: two agents at fe80::1%eth0 and
        # fe80::1%eth1 share a server_hostname, not a session.
        self.session_name = session_name or server_hostname
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.resuming = context if isinstance(context, ResumingContext) else None
        session = self.resuming.session_for(self.session_name) if self.resuming else None
        try:
            self.tls = context.wrap_bio(
                self._incoming, self._outgoing, server_hostname=server_hostname, session=session
            )
        except ValueError:  # a session the context no longer accepts
            self.tls = context.wrap_bio(
                self._incoming, self._outgoing, server_hostname=server_hostname
            )
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(_retrieve)
        self.transport: asyncio.Transport | None = None
        self.reader: ResponseReader | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.idle_since = 0.0
        self.version: str | None = None  # the TLS version negotiated
        self.answered = False  # application data has arrived on this connection
        self.exchanges = 0
        self.failure: BaseException | None = None  # what ended it while no request was out

    # -- asyncio callbacks: nothing may raise out of them ------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.pool.connections.add(self)
        self.pool.connections_made += 1
        self._handshake()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _landing.socket

    def buffer_updated(self, nbytes: int) -> None:
        if self.closed:
            return
        self._incoming.write(_landing.socket[:nbytes])
        if self.ready.done():
            self._read()
        else:
            self._handshake()

    def eof_received(self) -> bool | None:
        if not self.closed:
            self._incoming.write_eof()
            if self.ready.done():
                self._read()
            else:
                self._handshake()
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            self.ready.set_exception(
                ConnectionResetError(str(exc) if exc else "the agent closed the connection")
            )
        self._ended(None)
        self.closed = True
        self.pool.forget(self)

    # -- TLS ---------------------------------------------------------------------------
    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()  # our alert, if OpenSSL made one
            if not self.ready.done():
                self.ready.set_exception(exc)
            self.close()
            return
        self._flush()
        if self.pinned is not None:
            try:
                self.pinned.check(self.tls.getpeercert(binary_form=True))
            except ssl.SSLCertVerificationError as exc:
                self.ready.set_exception(exc)  # before any request: nothing was sent
                self.close()
                return
        self.version = self.tls.version()  # once the stream has failed, OpenSSL says None
        if self.resuming is not None:
            self.resuming.handshake_done(self.session_name, self.tls)
        self.ready.set_result(None)
        self._read()  # records that came with the end of the handshake

    def _read(self) -> None:
        while not self.closed:
            landing = _landing.plaintext
            try:
                # given a buffer, read() returns a count (typeshed says bytes)
                count = cast(int, self.tls.read(READ_SIZE, landing))
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                count = 0
            except ssl.SSLError as exc:  # an alert from the agent, or broken records
                self._ended(exc)
                self.close()
                return
            if not count:  # close_notify or the end of the stream
                self._ended(None)
                self.close()
                return
            self._plaintext(bytes(landing[:count]))
        self._flush()  # reading can answer the agent (a key update)

    def _plaintext(self, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            if self.resuming is not None:  # TLS 1.3 tickets come before any answer
                self.resuming.remember(self.session_name, self.tls)
        reader, waiter = self.reader, self.waiter
        if reader is None or waiter is None or waiter.done():
            self.close()  # nothing was asked: the connection is out of step
            return
        try:
            response = reader.feed(data)
        except BadHttp as exc:
            self.close()
            waiter.set_exception(exc)
            return
        if response is not None:
            self.reader = None
            waiter.set_result(response)

    def _ended(self, error: ssl.SSLError | None) -> None:
        """The agent ended the connection (``error``: with a TLS alert)."""
        if self.closed:
            return
        ending: BaseException
        if error is not None:
            ending = error
        elif self._refused_after_handshake():
            ending = ClosedAfterHandshake("the agent closed the connection after the handshake")
        else:
            ending = Dropped("the agent closed the connection")
        reader, waiter = self.reader, self.waiter
        self.reader = None
        if waiter is None or waiter.done():
            self.failure = ending
            return
        response = reader.feed_eof() if reader is not None and error is None else None
        if response is not None:
            waiter.set_result(response)
        else:
            waiter.set_exception(ending)

    def _refused_after_handshake(self) -> bool:
        """Whether the agent is ending a TLS 1.3 connection it never accepted.

        A TLS 1.3 server checks the client certificate after the client's handshake is
        done, and sends its session tickets only once it accepted the connection: a new
        connection that ends before any answer and without a ticket was refused.
        """
        if self.answered or self.exchanges > 1 or not self.ready.done():
            return False
        if self.ready.exception() is not None or self.version != "TLSv1.3":
            return False
        session = self.tls.session
        return session is None or not session.has_ticket

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- use ---------------------------------------------------------------------------
    async def exchange(self, reader: ResponseReader) -> Response:
        """Send one request and wait for its whole answer."""
        if self.failure is not None:
            raise self.failure
        if self.transport is None or self.closed:
            raise NotSent("the agent closed the connection before the request")
        assert self.reader is None
        self.exchanges += 1
        self.reader = reader
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            self.tls.write(reader.request)
            self._flush()
            return await self.waiter
        except BaseException:
            self.close()  # timed out or cancelled mid-answer: the connection is unusable
            raise
        finally:
            self.waiter = None
            self.reader = None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            if self.ready.done() and self.ready.exception() is None:
                with contextlib.suppress(ssl.SSLError):
                    self.tls.unwrap()  # close_notify
                self._flush()
            self.transport.close()
        self.pool.forget(self)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a handshake's failure as seen: a connect that timed out no longer awaits it."""
    if not future.cancelled():
        future.exception()


class Pool:
    """Kept-alive TLS connections to many agents, and the CA contexts they share.

    A kept-alive TLS connection costs the poller memory (OpenSSL, asyncio), so at most
    ``max_kept_alive`` agents keep theirs; the others close after each request and
    reconnect with TLS session resumption (no certificate check, no signatures). One idle
    connection is kept per agent and way of verifying it; one idle longer than
    ``keepalive`` is closed instead of used. No global connection limit: the poller bounds
    concurrency itself.
    """

    def __init__(
        self,
        keepalive: float = 60.0,
        max_kept_alive: int = DEFAULT_KEPT_ALIVE,
        max_body: int = MAX_BODY,
    ) -> None:
        self.keepalive = keepalive  # below the agent's 75 s, so we close first
        self.max_kept_alive = max_kept_alive
        self.max_body = max_body
        self.kept_alive: set[str] = set()
        self._contexts: dict[tuple[Any, ...], ResumingContext] = {}
        self.idle: dict[tuple[Any, ...], Connection] = {}
        self.connections: set[Connection] = set()  # open ones, idle or busy
        self.connections_made = 0

    def keep_alive_slot(self, address: str) -> bool:
        """Whether this agent gets a kept-alive connection (first come, first served)."""
        if address in self.kept_alive:
            return True
        if len(self.kept_alive) < self.max_kept_alive:
            self.kept_alive.add(address)
            return True
        return False

    def ca_context(
        self, cafile: Path, certfile: Path | None, keyfile: Path | None
    ) -> ssl.SSLContext:
        key = (cafile, certfile, keyfile)
        if key not in self._contexts:
            self._contexts[key] = conductor_context(
                cafile=cafile, certfile=certfile, keyfile=keyfile
            )
        return self._contexts[key]

    def pinned(self, pem: str, certfile: Path | None, keyfile: Path | None) -> Pinned:
        """Trust exactly the certificate in ``pem``, over the one context all pinned
        agents share (per client certificate); ValueError unless it is one certificate."""
        key = ("pinned", certfile, keyfile)
        if key not in self._contexts:
            self._contexts[key] = pinning_context(certfile=certfile, keyfile=keyfile)
        return Pinned.of(self._contexts[key], pem)

    async def connect(
        self,
        context: ssl.SSLContext | Pinned,
        host: str,
        port: int,
        timeout: float,
        server_hostname: str | None = None,
    ) -> Connection:
        """A new connection with its handshake done; the certificate is checked against
        ``server_hostname`` (default ``host``; an IPv6 zone cannot be in a certificate and
        must not be sent as SNI, see ``conductor.client.host_without_zone``).
        NotSent when nothing could be sent
        (no TCP connection, or it ended mid-handshake); the handshake's ``ssl.SSLError``
        when TLS refused (the agent's certificate, or an alert from the agent)."""
        loop = asyncio.get_running_loop()
        key = (host, port, context)
        try:
            async with asyncio.timeout(timeout):
                _transport, connection = await loop.create_connection(
                    lambda: Connection(self, key, context, server_hostname or host, host),
                    host,
                    port,
                )
        except (OSError, TimeoutError) as exc:
            raise NotSent(str(exc) or type(exc).__name__) from exc
        try:
            async with asyncio.timeout(timeout):
                await connection.ready
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError) as exc:
            connection.close()  # cut off mid-handshake: nothing was sent
            raise NotSent("the agent closed the connection during the TLS handshake") from exc
        except ssl.SSLError:
            connection.close()
            raise
        except (OSError, TimeoutError) as exc:
            connection.close()
            raise NotSent(str(exc) or "the TLS handshake timed out") from exc
        except BaseException:
            connection.close()
            raise
        return connection

    def take(self, key: tuple[Any, ...], now: float) -> Connection | None:
        """The idle connection for ``key``, if there is one still fit to use."""
        connection = self.idle.pop(key, None)
        if connection is None or connection.closed:
            return None
        if now - connection.idle_since > self.keepalive:
            connection.close()
            return None
        return connection

    def give_back(self, connection: Connection, now: float) -> None:
        if connection.closed or connection.key in self.idle:
            connection.close()
            return
        connection.idle_since = now
        self.idle[connection.key] = connection

    def keep_only(self, addresses: set[str]) -> None:
        """Forget the agents not at ``addresses`` (host:port): their kept-alive slots and
        idle connections, so a long-lived pool follows a changing fleet."""
        self.kept_alive &= addresses
        for key, connection in list(self.idle.items()):
            host, port = key[0], key[1]
            shown = f"[{host}]" if ":" in host else host
            if f"{shown}:{port}" not in addresses:
                del self.idle[key]
                connection.close()

    def forget(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if self.idle.get(connection.key) is connection:
            del self.idle[connection.key]

    async def close(self) -> None:
        for connection in list(self.connections):
            connection.close()
        self.idle.clear()
        await asyncio.sleep(0)  # let the transports send their close_notify
