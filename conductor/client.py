"""An async client for one agent: verified TLS, the token, retries, typed results and errors.

The server is always verified, one of four ways (``Trust``): a CA (name checked), the
agent's own certificate given as the CA file (pinned, no name check), a pinned SHA-256
fingerprint, or the token binding of docs/security.md. Trust on first use exists only
as an explicit mode that records the fingerprint it saw. For the last three the client
reads the certificate once over a probe connection that carries no secret, checks it,
and from then on talks only through a context that trusts exactly that certificate.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import hmac
import json
import random
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from wire.binding import binding_hmac
from wire.certs import fingerprint, spki_der
from wire.protocol import DEFAULT_PORT, RUNNING, SUCCEEDED

from .tls import conductor_context, limit_tls_read_buffer, probe_context

__all__ = ["DEFAULT_PORT", "RUNNING", "SUCCEEDED"]


# -- errors ------------------------------------------------------------------------------
class AgentError(Exception):
    """Anything that went wrong talking to an agent; ``exit_code`` is what ``tacet`` returns."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, address: str | None = None) -> None:
        super().__init__(f"{address}: {message}" if address else message)
        self.reason = message
        self.address = address


class Unreachable(AgentError):
    """No answer: refused, timed out or dropped, after the retries."""

    exit_code = 3
    kind = "unreachable"


class Untrusted(AgentError):
    """The server could not be verified (certificate, pin or binding): nothing was sent."""

    exit_code = 4
    kind = "untrusted"


class Unauthenticated(AgentError):
    """The agent refused us: wrong or missing token or client certificate, or held off."""

    exit_code = 4
    kind = "unauthenticated"


class Busy(AgentError):
    """Another command is still running on the agent (409)."""

    exit_code = 5
    kind = "busy"


class Rejected(AgentError):
    """The agent answered the request with an error (400, 404, 413, ...)."""

    exit_code = 1
    kind = "rejected"

    def __init__(self, message: str, address: str | None = None, status: int = 0) -> None:
        super().__init__(message, address)
        self.status = status


class CommandFailed(AgentError):
    """The command ran and FAILED; ``command_error`` is the agent's error object."""

    exit_code = 1
    kind = "command failed"

    def __init__(self, result: CommandResult, address: str | None = None) -> None:
        error = result.command_error or {}
        super().__init__(
            f"{result.command_name} failed: {error.get('message') or error or result.status}",
            address,
        )
        self.result = result
        self.command_error = error


class ProtocolError(AgentError):
    """The answer is not what docs/protocol.md says (not JSON, missing keys, a redirect...)."""

    exit_code = 6
    kind = "protocol error"


# -- addresses and trust -----------------------------------------------------------------
def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address."""
    text = text.strip()
    port: str | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [ADDRESS]:PORT")
        port = rest[1:] or None
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host = text
    if not host:
        raise ValueError(f"{text!r}: no host")
    if port is None:
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port must be 1-65535")
    return host, int(port)


def parse_pin(text: str) -> str:
    """``sha256:HEX`` (colons allowed, any case) -> 64 lower-case hex digits."""
    algo, colon, digest = text.partition(":")
    if not colon or algo.lower() != "sha256":
        raise ValueError("a pin is sha256:<64 hex digits> (the certificate's SHA-256)")
    digest = digest.replace(":", "").lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError("a pin is sha256:<64 hex digits> (the certificate's SHA-256)")
    return digest


def _is_single_leaf(pem: str) -> bool:
    """True when the file holds one certificate that is not a CA: the agent's own."""
    from cryptography import x509

    certificates = x509.load_pem_x509_certificates(pem.encode())
    if len(certificates) != 1:
        return False
    try:
        constraints = certificates[0].extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return True
    return not constraints.value.ca


@dataclass(frozen=True)
class Trust:
    """How the agent's certificate is verified, and our optional client certificate."""

    cafile: Path | None = None
    pin: str | None = None  # 64 hex digits, see parse_pin
    trust_on_first_use: bool = False
    certfile: Path | None = None
    keyfile: Path | None = None

    def mode(self, token: str | None) -> str:
        """ca, pinned-certificate, pin, tofu or binding; ValueError when none or several."""
        chosen = [
            name
            for name, given in (
                ("cafile", self.cafile is not None),
                ("pin", self.pin is not None),
                ("trust-on-first-use", self.trust_on_first_use),
            )
            if given
        ]
        if len(chosen) > 1:
            raise ValueError(f"choose one way to verify the agent, not {' and '.join(chosen)}")
        if self.cafile is not None:
            return "pinned-certificate" if _is_single_leaf(self.cafile.read_text()) else "ca"
        if self.pin is not None:
            return "pin"
        if self.trust_on_first_use:
            return "tofu"
        if token:
            return "binding"
        raise ValueError(
            "no way to verify the agent: give --cafile, --pin, a pre-shared --token "
            "(token binding) or, explicitly, --trust-on-first-use"
        )


@dataclass(frozen=True)
class Options:
    """Everything one agent connection needs besides its address."""

    trust: Trust = field(default_factory=Trust)
    token: str | None = field(default=None, repr=False)
    timeout: float = 60.0  # per request (a ?wait=true request may take longer: see run)
    connect_timeout: float = 10.0
    retries: int = 3  # on connection errors
    backoff: float = 0.5  # first retry delay; doubles, jittered


# -- typed results -----------------------------------------------------------------------
def _require(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind):
        raise ProtocolError(f"{what} has the wrong type ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class Status:
    started_at: float
    version: str
    mode: str | None
    node_uuid: str | None
    certificate_fingerprint: str | None
    claimed_by: str | None
    binding: dict[str, Any] | None
    raw: dict[str, Any]

    @classmethod
    def parse(cls, data: Any) -> Status:
        data = _require(data, dict, "status")
        return cls(
            started_at=float(_require(data.get("started_at"), (int, float), "started_at")),
            version=_require(data.get("version"), str, "version"),
            mode=data.get("mode"),
            node_uuid=data.get("node_uuid"),
            certificate_fingerprint=data.get("certificate_fingerprint"),
            claimed_by=data.get("claimed_by"),
            binding=data.get("binding"),
            raw=data,
        )


RESULT_KEYS = ("id", "command_name", "command_status", "command_error", "command_result")


@dataclass(frozen=True)
class CommandResult:
    id: str
    command_name: str
    status: str
    command_error: dict[str, Any] | None
    command_result: dict[str, Any] | None

    @classmethod
    def parse(cls, data: Any) -> CommandResult:
        data = _require(data, dict, "command result")
        missing = [key for key in RESULT_KEYS if key not in data]
        if missing:
            raise ProtocolError(f"command result lacks {', '.join(missing)}")
        return cls(
            id=_require(data["id"], str, "id"),
            command_name=_require(data["command_name"], str, "command_name"),
            status=_require(data["command_status"], str, "command_status"),
            command_error=_require(data["command_error"], (dict, type(None)), "command_error"),
            command_result=_require(data["command_result"], (dict, type(None)), "command_result"),
        )

    @property
    def running(self) -> bool:
        return self.status == RUNNING


@dataclass(frozen=True)
class Inventory:
    """The inventory as sent, with the identity facts the poller compares."""

    raw: dict[str, Any]

    @property
    def macs(self) -> frozenset[str]:
        return frozenset(
            str(nic["mac_address"]).lower()
            for nic in self.raw.get("interfaces") or []
            if isinstance(nic, dict) and nic.get("mac_address")
        )

    @property
    def system(self) -> dict[str, Any]:
        value = self.raw.get("system_vendor")
        return value if isinstance(value, dict) else {}

    @property
    def system_serial(self) -> str | None:
        return self.system.get("serial_number")

    @property
    def system_uuid(self) -> str | None:
        return self.system.get("uuid")

    @property
    def disks(self) -> list[dict[str, Any]]:
        return [d for d in self.raw.get("disks") or [] if isinstance(d, dict)]

    @property
    def disk_serials(self) -> frozenset[str]:
        return frozenset(str(d["serial"]) for d in self.disks if d.get("serial"))


@dataclass(frozen=True)
class PartitionUuids:
    root_uuid: str | None
    efi_system_partition_uuid: str | None
    partitions: dict[str, str]

    @classmethod
    def parse(cls, data: Any) -> PartitionUuids:
        data = _require(data, dict, "partition uuids")
        return cls(
            root_uuid=data.get("root uuid"),
            efi_system_partition_uuid=data.get("efi system partition uuid"),
            partitions=dict(data.get("partitions") or {}),
        )


# -- connections -------------------------------------------------------------------------
DEFAULT_KEPT_ALIVE = 1000
POLLER_GC_THRESHOLD = 20_000


def tune_gc_for_polling(
    agents: int, max_kept_alive: int = DEFAULT_KEPT_ALIVE, threshold: int = POLLER_GC_THRESHOLD
) -> bool:
    """Run Python's cycle collector less often when every agent keeps its connection.

    A request allocates many short-lived objects; with the default of a collection per
    700 new objects, a sweep with hundreds of requests in flight collects often and
    promotes live in-flight objects into full collections: at 1,000 kept-alive agents
    this cost 0.1 of a kept-alive inventory sweep's 0.45 CPU-seconds on aiohttp's client
    (0.02 with this), and 0.02 s on the client's own HTTP path (under 0.005 with this).
    Not when agents reconnect per request (more than
    ``max_kept_alive``): each closed TLS connection is cyclic garbage holding OpenSSL
    memory, and collecting it later cost 27-33 MiB at 5,000 agents. Process-wide;
    ``tacet provision`` calls it. Returns whether the threshold was raised.
    """
    if agents > max_kept_alive:
        return False
    gc.set_threshold(threshold, *gc.get_threshold()[1:])
    return True


def printable_token(token: str) -> bool:
    """Whether ``token`` can go into an HTTP header as it is (printable ASCII)."""
    return token.isascii() and token.isprintable()


class BadHttp(Exception):
    """The bytes from the agent are not an HTTP/1.1 response we can read."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; the last value of a repeated header
    body: bytes
    keep_alive: bool  # the agent leaves the connection open after this answer


MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024 * 1024  # the largest answer is the log archive (base64)


class ResponseReader:
    """An HTTP/1.1 response parsed as its bytes arrive (sans I/O; one per request).

    Hand-written on purpose. aiohttp's ``ClientSession`` was the poller's cost: its
    per-request machinery (URL building, ``ClientRequest``/``ClientResponse``, timers,
    connector bookkeeping, payload objects) took most of the 0.58 CPU-seconds of a
    kept-alive 1,000-agent inventory sweep (cProfile of bench/fleet.py). Its llhttp
    parser is fast, but used on its own it needs aiohttp's internal ``StreamReader`` and
    ``BaseProtocol`` flow control (re-entrant pause/resume that changed between the
    releases ``aiohttp>=3.11`` allows). An agent's answer is a small, known subset of
    HTTP/1.1: a status line, headers, then a ``Content-Length`` body, a chunked body or,
    with ``Connection: close``, a body up to the end. Anything else is ``BadHttp``.
    """

    def __init__(self, method: str = "GET") -> None:
        self.method = method
        self.buffer = bytearray()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = True
        self.length: int | None = None  # None: chunked or up to the end
        self.chunked = False
        self.in_body = False
        self.body = bytearray()
        self.response: Response | None = None

    def feed(self, data: bytes) -> Response | None:
        """Take bytes; the response once it is complete, else None."""
        if self.response is not None:
            raise BadHttp("data after the end of the response")
        self.buffer += data
        if not self.in_body and not self._head():
            return None
        if self.chunked:
            return self._chunks()
        if self.length is not None:
            if len(self.buffer) > self.length:
                raise BadHttp("more data than Content-Length")
            if len(self.buffer) == self.length:
                return self._finish(bytes(self.buffer))
            return None
        if len(self.buffer) > MAX_BODY:
            raise BadHttp("response body too large")
        return None  # up to the end of the connection

    def feed_eof(self) -> Response | None:
        """The connection ended: the response if it is complete now, else None."""
        if self.response is not None:
            return self.response
        if self.in_body and self.length is None and not self.chunked:
            self.keep_alive = False
            return self._finish(bytes(self.buffer))
        return None

    def _head(self) -> bool:
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    raise BadHttp("response head too large")
                return False
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            lines = head.split("\r\n")
            version, _, rest = lines[0].partition(" ")
            code = rest.partition(" ")[0]
            if version not in ("HTTP/1.1", "HTTP/1.0") or not (code.isdigit() and len(code) == 3):
                raise BadHttp(f"not an HTTP/1.1 status line: {lines[0][:60]!r}")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, colon, value = line.partition(":")
                if not colon or not name or name != name.strip() or line[0] in " \t":
                    raise BadHttp(f"malformed header line {line[:60]!r}")
                name, value = name.lower(), value.strip()
                if name == "content-length" and headers.get(name, value) != value:
                    raise BadHttp("conflicting Content-Length headers")
                headers[name] = value
            status = int(code)
            if 100 <= status < 200:
                continue  # an interim answer; the real one follows
            self.status, self.headers, self.in_body = status, headers, True
            connection = headers.get("connection", "").lower()
            self.keep_alive = version == "HTTP/1.1" and "close" not in connection
            encoding = headers.get("content-encoding", "identity").lower()
            if encoding != "identity":  # we never send Accept-Encoding
                raise BadHttp(f"unrequested Content-Encoding {encoding!r}")
            transfer = headers.get("transfer-encoding")
            if self.method == "HEAD" or status in (204, 304):
                self.length = 0
            elif transfer is not None:
                if transfer.lower() != "chunked":
                    raise BadHttp(f"unsupported Transfer-Encoding {transfer!r}")
                self.chunked = True
            elif "content-length" in headers:
                text = headers["content-length"]
                if not text.isdigit() or int(text) > MAX_BODY:
                    raise BadHttp(f"bad Content-Length {text[:30]!r}")
                self.length = int(text)
            else:
                self.keep_alive = False  # the body ends with the connection
            return True

    def _chunks(self) -> Response | None:
        buffer = self.buffer
        while True:
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > 1024:
                    raise BadHttp("chunk size line too long")
                return None
            size_text = bytes(buffer[:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadHttp(f"bad chunk size {size_text[:20]!r}") from None
            if size < 0 or size_text[:1] in (b"+", b"-"):
                raise BadHttp(f"bad chunk size {size_text[:20]!r}")
            if size == 0:
                trailer = buffer.find(b"\r\n\r\n", end)  # after trailer fields, if any
                if trailer < 0:
                    if len(buffer) > MAX_HEAD:
                        raise BadHttp("chunked trailer too large")
                    return None
                if len(buffer) > trailer + 4:
                    raise BadHttp("data after the end of the response")
                return self._finish(bytes(self.body))
            if len(buffer) < end + 2 + size + 2:
                return None
            if buffer[end + 2 + size : end + 4 + size] != b"\r\n":
                raise BadHttp("chunk not followed by CRLF")
            self.body += buffer[end + 2 : end + 2 + size]
            if len(self.body) > MAX_BODY:
                raise BadHttp("response body too large")
            del buffer[: end + 4 + size]

    def _finish(self, body: bytes) -> Response:
        self.response = Response(self.status, self.headers, body, self.keep_alive)
        return self.response


class Dropped(Exception):
    """The connection ended before the whole answer arrived (the request may have run)."""


class NotSent(Exception):
    """Connecting failed: nothing was sent."""


class Connection(asyncio.Protocol):
    """One TLS connection to an agent, one request at a time (HTTP/1.1, no pipelining)."""

    def __init__(self, pool: Pool, key: tuple[Any, ...]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.reader: ResponseReader | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.pool.connections.add(self)
        self.pool.connections_made += 1

    def data_received(self, data: bytes) -> None:
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

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.pool.forget(self)
        reader, waiter = self.reader, self.waiter
        if reader is None or waiter is None or waiter.done():
            return
        self.reader = None
        try:
            response = reader.feed_eof()
        except BadHttp as error:
            waiter.set_exception(error)
            return
        if response is not None:
            waiter.set_result(response)
        else:
            waiter.set_exception(Dropped(str(exc) if exc else "the agent closed the connection"))

    async def exchange(self, request: bytes, method: str) -> Response:
        """Send one request and wait for its whole answer."""
        if self.transport is None or self.closed:  # closed right after the handshake
            raise NotSent("the agent closed the connection before the request")
        assert self.reader is None
        self.reader = ResponseReader(method)
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self.waiter
        except BaseException:
            self.close()  # timed out or cancelled mid-answer: the connection is unusable
            raise
        finally:
            self.waiter = None

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
            self.pool.forget(self)


class Pool:
    """Kept-alive TLS connections to many agents, and the CA contexts they share.

    Requests go through ``Connection`` (an asyncio protocol and ``ResponseReader``), not
    through aiohttp's client: see ``ResponseReader`` for why. A kept-alive TLS connection
    costs the poller about 63 KiB (OpenSSL, asyncio), so at most ``max_kept_alive``
    agents keep theirs; the others close after each request and reconnect with TLS
    session resumption (no certificate check, no signatures). One idle connection is
    kept per agent and way of verifying it; one idle longer than ``keepalive`` is closed
    instead of used. No global connection limit: the poller bounds concurrency itself.
    """

    def __init__(self, keepalive: float = 60.0, max_kept_alive: int = DEFAULT_KEPT_ALIVE) -> None:
        self.keepalive = keepalive  # below the agent's 75 s, so we close first
        self.max_kept_alive = max_kept_alive
        self.kept_alive: set[str] = set()
        self._contexts: dict[tuple[Any, ...], ssl.SSLContext] = {}
        self.idle: dict[tuple[Any, ...], Connection] = {}
        self.connections: set[Connection] = set()  # open ones, idle or busy
        self.connections_made = 0
        limit_tls_read_buffer()

    def keep_alive_slot(self, address: str) -> bool:
        """Whether this agent gets a kept-alive connection (first come, first served)."""
        if address in self.kept_alive:
            return True
        if len(self.kept_alive) < self.max_kept_alive:
            self.kept_alive.add(address)
            return True
        return False

    def ca_context(self, trust: Trust) -> ssl.SSLContext:
        key = (trust.cafile, trust.certfile, trust.keyfile)
        if key not in self._contexts:
            self._contexts[key] = conductor_context(
                cafile=trust.cafile, certfile=trust.certfile, keyfile=trust.keyfile
            )
        return self._contexts[key]

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

    def forget(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if self.idle.get(connection.key) is connection:
            del self.idle[connection.key]

    async def close(self) -> None:
        for connection in list(self.connections):
            connection.close()
        self.idle.clear()
        await asyncio.sleep(0)  # let the transports send their close_notify


ProgressCallback = Callable[[CommandResult], None]


class AgentClient:
    """One agent. Use ``async with AgentClient(...)`` or share a ``Pool`` for many."""

    def __init__(
        self, address: str, options: Options | None = None, pool: Pool | None = None
    ) -> None:
        self.host, self.port = parse_address(address)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.address = f"{shown}:{self.port}"
        self.base = f"https://{self.address}"
        self.options = options or Options()
        self.mode = self.options.trust.mode(self.options.token)  # fails early on bad trust
        self._own_pool = pool is None
        self.pool = pool or Pool()
        self.context: ssl.SSLContext | None = None
        self.seen_fingerprint: str | None = None  # colon hex, as the agent prints it
        self.keep_alive = self.pool.keep_alive_slot(self.address)
        token = self.options.token
        if token is not None and not printable_token(token):
            raise ValueError("the token must be printable ASCII")
        self._authorization = f"Authorization: Bearer {token}\r\n"

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_pool:
            await self.pool.close()

    # -- trust ---------------------------------------------------------------------------
    async def verify_server(self) -> None:
        """Establish the context every later request uses; Untrusted when it does not verify."""
        if self.context is not None:
            return
        trust = self.options.trust
        if self.mode == "ca":
            self.context = self.pool.ca_context(trust)
            return
        if self.mode == "pinned-certificate":
            assert trust.cafile is not None
            self.context = conductor_context(
                cadata=trust.cafile.read_text(), certfile=trust.certfile, keyfile=trust.keyfile
            )
            return
        der = await self._probe()
        seen = hashlib.sha256(der).hexdigest()
        if self.mode == "pin" and not hmac.compare_digest(seen, trust.pin or ""):
            raise Untrusted(
                f"certificate sha256:{seen} does not match the pin sha256:{trust.pin}",
                self.address,
            )
        pem = ssl.DER_cert_to_PEM_cert(der)
        context = conductor_context(cadata=pem, certfile=trust.certfile, keyfile=trust.keyfile)
        if self.mode == "binding":
            # The public status, over a connection that trusts exactly the certificate
            # seen, without the token; the token goes out only once the binding holds.
            self._check_binding(der, await self._get(context, "/v1/status", token=False))
        self.seen_fingerprint = fingerprint(pem)
        self.context = context

    def _check_binding(self, der: bytes, status: Any) -> None:
        binding = status.get("binding") if isinstance(status, dict) else None
        if not isinstance(binding, dict):
            raise Untrusted(
                "the agent shows no token binding (it has no pre-shared token?); "
                "verify it with --cafile or --pin instead",
                self.address,
            )
        if binding.get("version") != 1:
            raise Untrusted(f"unknown token binding version {binding.get('version')!r}")
        spki = hashlib.sha256(spki_der(der)).hexdigest()
        assert self.options.token is not None
        expected = binding_hmac(self.options.token, spki)
        if binding.get("spki_sha256") != spki or not hmac.compare_digest(
            str(binding.get("hmac_sha256", "")), expected
        ):
            raise Untrusted(
                "the token binding does not match the certificate served: "
                "an impostor, or a different token",
                self.address,
            )

    async def _probe(self) -> bytes:
        """The certificate the agent serves, read in a handshake that sends nothing else."""
        trust = self.options.trust
        context = probe_context(trust.certfile, trust.keyfile)

        async def attempt() -> bytes:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=context),
                self.options.connect_timeout,
            )
            try:
                ssl_object = writer.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            finally:
                writer.close()
            if not der:
                raise ProtocolError("no server certificate seen", self.address)
            return bytes(der)

        der: bytes = await self._with_retries(attempt, idempotent=True)
        return der

    # -- requests ------------------------------------------------------------------------
    async def _with_retries(self, attempt: Callable[[], Any], idempotent: bool) -> Any:
        tries = 0
        while True:
            try:
                return await attempt()
            except ssl.SSLCertVerificationError as exc:
                raise Untrusted(
                    f"certificate not trusted: {exc.verify_message}", self.address
                ) from None
            except ssl.SSLError as exc:
                raise Unauthenticated(f"TLS handshake refused: {exc}", self.address) from None
            except NotSent as exc:  # connecting failed: nothing was sent
                error: BaseException = exc.__cause__ or exc
                retry = True
            except (Dropped, TimeoutError) as exc:
                error, retry = exc, idempotent
            except BadHttp as exc:
                raise ProtocolError(f"bad HTTP answer: {exc}", self.address) from None
            except OSError as exc:  # the probe: refused, unreachable, reset before use
                error, retry = exc, True
            if not retry or tries >= self.options.retries:
                reason = str(error) or type(error).__name__
                raise Unreachable(reason, self.address) from None
            await asyncio.sleep(self.options.backoff * 2**tries * random.uniform(0.5, 1.5))
            tries += 1

    def _decode(self, code: int, body: bytes, retry_after: str | None = None) -> Any:
        try:
            data = json.loads(body) if body else None
        except ValueError:
            raise ProtocolError(f"HTTP {code} with a body that is not JSON", self.address) from None
        if code == 200:
            return data
        fault = data.get("faultstring") if isinstance(data, dict) else None
        if not isinstance(fault, str):
            raise ProtocolError(f"HTTP {code} without a faultstring", self.address)
        if code == 401:
            raise Unauthenticated(fault, self.address)
        if code == 429:
            raise Unauthenticated(
                f"{fault} (held off after failed attempts; Retry-After {retry_after} s)",
                self.address,
            )
        if code == 409 and "busy" in fault.lower():
            raise Busy(fault, self.address)
        if 400 <= code < 600:
            raise Rejected(fault, self.address, status=code)
        raise ProtocolError(f"unexpected HTTP {code}: {fault}", self.address)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float | None = None,
        token: bool = True,
    ) -> Any:
        """One API request with the token; GETs are retried after a dropped connection,
        POSTs only when the connection never opened (a command must not run twice)."""
        await self.verify_server()
        assert self.context is not None
        return await self._send(self.context, method, path, body, timeout, token)

    async def _get(self, context: ssl.SSLContext, path: str, token: bool) -> Any:
        return await self._send(context, "GET", path, None, None, token)

    def _request_bytes(self, method: str, path: str, body: Any, token: bool) -> bytes:
        if not path.startswith("/") or not path.isascii() or not path.isprintable() or " " in path:
            raise ValueError(f"not a request path: {path!r}")
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.address}\r\n"
        if token and self.options.token:
            head += self._authorization
        if not self.keep_alive:
            head += "Connection: close\r\n"
        if method != "POST":
            return (head + "\r\n").encode("ascii")
        payload = json.dumps(body).encode()
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        return head.encode("ascii") + payload

    async def _connect(self, context: ssl.SSLContext, key: tuple[Any, ...]) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            _transport, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Connection(self.pool, key),
                    self.host,
                    self.port,
                    ssl=context,
                    server_hostname=self.host,
                    ssl_handshake_timeout=self.options.connect_timeout,
                ),
                self.options.connect_timeout,
            )
        except ssl.SSLError:
            raise
        except (OSError, TimeoutError) as exc:
            raise NotSent(str(exc) or type(exc).__name__) from exc
        return connection

    async def _send(
        self,
        context: ssl.SSLContext,
        method: str,
        path: str,
        body: Any,
        timeout: float | None,
        token: bool,
    ) -> Any:
        request = self._request_bytes(method, path, body, token)
        key = (self.host, self.port, context)
        pool = self.pool
        loop = asyncio.get_running_loop()

        async def attempt() -> Any:
            async with asyncio.timeout(timeout or self.options.timeout):
                connection = pool.take(key, loop.time()) if self.keep_alive else None
                if connection is None:
                    connection = await self._connect(context, key)
                response = await connection.exchange(request, method)
            if self.keep_alive and response.keep_alive:
                pool.give_back(connection, loop.time())
            else:
                connection.close()
            return self._decode(response.status, response.body, response.headers.get("retry-after"))

        return await self._with_retries(attempt, idempotent=method == "GET")

    # -- the API -------------------------------------------------------------------------
    async def status(self) -> Status:
        """The public status (sent without the token)."""
        return Status.parse(await self.request("GET", "/v1/status", token=False))

    async def list_commands(self) -> list[CommandResult]:
        data = await self.request("GET", "/v1/commands/")
        commands = _require(data, dict, "command list").get("commands")
        return [CommandResult.parse(r) for r in _require(commands, list, "commands")]

    async def get_command(self, result_id: str) -> CommandResult:
        path = f"/v1/commands/{quote(result_id, safe='')}"
        return CommandResult.parse(await self.request("GET", path))

    async def run(
        self, name: str, params: dict[str, Any] | None = None, check: bool = True
    ) -> CommandResult:
        """POST a command; raises CommandFailed when it FAILED (unless ``check`` is off).
        An async command comes back RUNNING: see ``wait``."""
        result = CommandResult.parse(
            await self.request("POST", "/v1/commands/", {"name": name, "params": params or {}})
        )
        if check and not result.running and result.status != SUCCEEDED:
            raise CommandFailed(result, self.address)
        return result

    async def wait(
        self,
        result: CommandResult,
        interval: float = 1.0,
        deadline: float | None = None,
        on_poll: ProgressCallback | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Poll the result at a jittered interval until it is no longer RUNNING."""
        loop = asyncio.get_running_loop()
        end = None if deadline is None else loop.time() + deadline
        while result.running:
            if end is not None and loop.time() > end:
                raise Unreachable(
                    f"{result.command_name} still running after {deadline} s", self.address
                )
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            result = await self.get_command(result.id)
            if on_poll is not None:
                on_poll(result)
        if check and result.status != SUCCEEDED:
            raise CommandFailed(result, self.address)
        return result

    async def get_hardware_info(self, refresh: bool = False) -> Inventory:
        result = await self.run("poll.get_hardware_info", {"refresh": True} if refresh else {})
        return Inventory(_require(result.command_result, dict, "inventory"))

    async def set_node_info(self, node_info: dict[str, Any]) -> dict[str, Any]:
        result = await self.run("poll.set_node_info", {"node_info": node_info})
        return result.command_result or {}

    async def get_node_info(self) -> dict[str, Any] | None:
        return (await self.run("poll.get_node_info")).command_result

    async def get_clean_steps(self) -> dict[str, Any]:
        return (await self.run("clean.get_clean_steps")).command_result or {}

    async def get_deploy_steps(self) -> dict[str, Any]:
        return (await self.run("deploy.get_deploy_steps")).command_result or {}

    async def prepare_image(
        self, image_info: dict[str, Any], configdrive: str | None = None
    ) -> CommandResult:
        params: dict[str, Any] = {"image_info": image_info}
        if configdrive is not None:
            params["configdrive"] = configdrive
        return await self.run("standby.prepare_image", params)

    async def write_image(
        self, image_info: dict[str, Any], node: dict[str, Any] | None = None
    ) -> CommandResult:
        """ironic's whole-disk path: deploy step ``write_image``."""
        step = {"step": "write_image", "interface": "deploy", "args": {"image_info": image_info}}
        params: dict[str, Any] = {"step": step}
        if node is not None:
            params["node"] = node
        return await self.run("deploy.execute_deploy_step", params)

    async def erase_devices_metadata(self, node: dict[str, Any] | None = None) -> CommandResult:
        step = {"step": "erase_devices_metadata", "interface": "deploy", "args": {}}
        params: dict[str, Any] = {"step": step}
        if node is not None:
            params["node"] = node
        return await self.run("clean.execute_clean_step", params)

    async def get_partition_uuids(self) -> PartitionUuids:
        return PartitionUuids.parse((await self.run("standby.get_partition_uuids")).command_result)

    async def sync(self) -> None:
        await self.run("standby.sync")

    async def power_off(self) -> CommandResult:
        return await self.run("standby.power_off")

    async def run_image(self) -> CommandResult:
        return await self.run("standby.run_image")

    async def collect_system_logs(self) -> bytes:
        """The agent's log archive (tar.gz bytes)."""
        result = await self.run("log.collect_system_logs")
        encoded = _require((result.command_result or {}).get("system_logs"), str, "system_logs")
        try:
            return base64.b64decode(encoded, validate=True)
        except ValueError:
            raise ProtocolError("system_logs is not base64", self.address) from None


def describe(error: BaseException) -> str:
    """One line for an operator."""
    if isinstance(error, AgentError):
        return f"{error.kind}: {error}"
    return f"{type(error).__name__}: {error}"


def macs(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.strip().lower().replace("-", ":") for v in values)
