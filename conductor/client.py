"""An async client for one agent: verified TLS, the token, retries, typed results and errors.

The server is always verified, one of four ways (``Trust``): a CA (name checked), the
agent's own certificate given as the CA file (pinned, no name check), a pinned SHA-256
fingerprint, or the token binding of docs/security.md. Trust on first use exists only
as an explicit mode that records the fingerprint it saw. For the last three the client
reads the certificate once over a probe connection that carries no secret, checks it,
and from then on talks only to exactly that certificate (``conductor.tls.Pinned``).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import hmac
import ipaddress
import json
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from wire import __version__
from wire.binding import binding_hmac
from wire.certs import fingerprint, spki_der
from wire.protocol import DEFAULT_PORT, RUNNING, SUCCEEDED

from .http import (
    DEFAULT_KEPT_ALIVE,
    MAX_BODY,
    MAX_HEAD,
    MAX_HEADERS,
    BadHttp,
    ClosedAfterHandshake,
    Connection,
    Dropped,
    NotSent,
    Pool,
    Response,
    ResponseReader,
    TooLarge,
    one_line,
    tune_gc_for_polling,
)
from .tls import Pinned, probe_context

__all__ = [  # what other modules take from here; the HTTP layer itself is in .http
    "DEFAULT_KEPT_ALIVE",
    "DEFAULT_PORT",
    "MAX_BODY",
    "MAX_HEAD",
    "MAX_HEADERS",
    "RUNNING",
    "SUCCEEDED",
    "BadHttp",
    "Connection",
    "Dropped",
    "NotSent",
    "Pool",
    "Response",
    "ResponseReader",
    "tune_gc_for_polling",
]

# The largest answer each call accepts, checked as the bytes arrive (docs/conductor.md).
# Measured: a status is under 2 KiB, an ordinary command result a few KiB, an inventory
# 2-4 KiB for the VMs in tests/fixtures (tens of KiB for a large server), a log archive
# at most about 48 MiB of base64 (nine files of at most 4 MiB each, incompressible).
KIB, MIB = 1024, 1024 * 1024
STATUS_LIMIT = 1 * MIB  # GET /v1/status
RESULT_LIMIT = 1 * MIB  # an ordinary command result, and any error answer
INVENTORY_LIMIT = 16 * MIB  # poll.get_hardware_info
LOGS_LIMIT = 64 * MIB  # log.collect_system_logs
HISTORY_LIMIT = 64 * MIB  # GET /v1/commands/ (it may hold a log archive)

USER_AGENT = f"tacet-conductor/{__version__}"
DEFAULT_DEADLINE = 120.0  # one call with its retries and their backoff, s


def size_text(size: int) -> str:
    """``1 MiB``, ``64 KiB`` or ``1000 bytes``: limits as an operator reads them."""
    for unit, name in ((MIB, "MiB"), (KIB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"


T = TypeVar("T")


@dataclass
class _Call:
    """One API call in progress: when its deadline is, what its attempts saw."""

    deadline: float  # seconds it was given
    end: float  # the event loop's time at which it ends
    attempts: int = 0
    last_error: str | None = None


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("tacet_call", default=None)


# -- errors ------------------------------------------------------------------------------
class AgentError(Exception):
    """Anything that went wrong talking to an agent; ``exit_code`` is what ``tacet`` returns."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, address: str | None = None) -> None:
        message = one_line(message, limit=2000)  # often the agent's words: no control chars
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


class HeldOff(Unauthenticated):
    """The agent holds this peer off (429) after failed attempts: a wait, not a verdict."""


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


# TLS alerts (``ssl.SSLError.reason``) with which an agent refuses our client certificate
# or its absence; OpenSSL's names. A TLS 1.2 agent answers a missing one with a plain
# handshake failure.
CLIENT_CERTIFICATE_ALERTS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)


# -- addresses and trust -----------------------------------------------------------------
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_ZONE = re.compile(r"[\w.-]{1,15}", re.ASCII)  # Linux interface names (IFNAMSIZ), indexes


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPV6]``, ``[IPV6]:PORT`` or a bare IPv6 address (which
    then has the default port: a port after an IPv6 address needs the brackets, as in a
    URL). An IPv6 address comes back in its compressed form, its zone (``%eth0``) kept."""
    text = text.strip()
    try:
        bare: IPAddress | None = ipaddress.ip_address(text)
    except ValueError:
        bare = None
    if bare is not None:
        return _checked_zone(str(bare)), default_port
    expected = f"{text!r}: expected HOST, HOST:PORT, [IPV6] or [IPV6]:PORT"
    try:
        parts = urlsplit(f"//{text}")
        host = parts.hostname
    except ValueError as exc:  # unbalanced brackets, not an IPv6 address in them
        raise ValueError(f"{expected} ({str(exc).lower()})") from None
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r}: port must be 1-65535") from None
    if not host:
        raise ValueError(f"{text!r}: no host")
    shown = f"[{host}]" if text.startswith("[") else host
    rebuilt = shown if port is None else f"{shown}:{port}"
    if rebuilt.lower() != text.lower():
        raise ValueError(expected)  # a path, a user, an empty port, text after "]"
    if text.startswith("["):
        host = _checked_zone(str(ipaddress.IPv6Address(text[1 : text.index("]")])))
    if port is None:
        return host, default_port
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port must be 1-65535")
    return host, port


def _checked_zone(host: str) -> str:
    """``host``, refused when its IPv6 zone is not an interface name or index."""
    zone = host.partition("%")[2]
    if "%" in host and not _ZONE.fullmatch(zone):
        raise ValueError(f"{host!r}: the zone after % must be an interface name or index")
    return host


def host_without_zone(host: str) -> str:
    """``host`` without an IPv6 zone (``fe80::1%eth0`` -> ``fe80::1``): what the agent's
    certificate can name, and what goes in the Host header (the zone means something only
    on this machine, RFC 6874)."""
    return host.partition("%")[0] if ":" in host else host


def bracketed(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (RFC 3986)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    timeout: float = 60.0  # per attempt: one request and its whole answer
    connect_timeout: float = 10.0  # per attempt: TCP connect, and then the TLS handshake
    retries: int = 3  # on connection errors
    backoff: float = 0.5  # first retry delay; doubles, jittered
    deadline: float | None = DEFAULT_DEADLINE  # per call, its retries and backoff included
    # Who is asking, in the agent's access log: a site with several conductors names each.
    user_agent: str = USER_AGENT


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

    def differences(
        self,
        macs: frozenset[str],
        system_serial: str | None = None,
        system_uuid: str | None = None,
        disk_serials: frozenset[str] = frozenset(),
    ) -> list[str]:
        """What this inventory says that does not fit the expected machine (empty: it is
        the machine); one place for Tacet's poller and the ironic plugin alike."""
        problems = []
        missing = sorted(macs - self.macs)
        if missing:
            seen = ", ".join(sorted(self.macs)) or "none"
            problems.append(f"MAC(s) {', '.join(missing)} not present (the agent has: {seen})")
        if system_serial and system_serial != self.system_serial:
            problems.append(f"system serial is {self.system_serial!r}, expected {system_serial!r}")
        if system_uuid and system_uuid.lower() != str(self.system_uuid or "").lower():
            problems.append(f"system UUID is {self.system_uuid!r}, expected {system_uuid!r}")
        missing_disks = sorted(disk_serials - self.disk_serials)
        if missing_disks:
            problems.append(f"disk serial(s) {', '.join(missing_disks)} not present")
        return problems


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


def printable_token(token: str) -> bool:
    """Whether ``token`` can go into an HTTP header as it is (printable ASCII)."""
    return token.isascii() and token.isprintable()


ProgressCallback = Callable[[CommandResult], None]


class AgentClient:
    """One agent. Use ``async with AgentClient(...)`` or share a ``Pool`` for many."""

    def __init__(
        self, address: str, options: Options | None = None, pool: Pool | None = None
    ) -> None:
        self.host, self.port = parse_address(address)  # what we connect to, zone and all
        self.address = bracketed(self.host, self.port)  # as shown and as the pool knows it
        # What the certificate must name: Python's ssl matches an IP address against the
        # IP SANs and sends no SNI for it (RFC 6066), but only without a zone.
        self.server_hostname = host_without_zone(self.host)
        self.host_header = bracketed(self.server_hostname, self.port)  # RFC 7230, RFC 6874
        self.base = f"https://{self.address.replace('%', '%25')}"
        self.options = options or Options()
        self.mode = self.options.trust.mode(self.options.token)  # fails early on bad trust
        self._own_pool = pool is None
        self.pool = pool or Pool()
        self.context: ssl.SSLContext | Pinned | None = None
        self.seen_fingerprint: str | None = None  # colon hex, as the agent prints it
        self.seen_certificate: str | None = None  # its PEM, once probed and verified
        self.last_call: _Call | None = None  # the attempts of the last call made
        self.keep_alive = self.pool.keep_alive_slot(self.address)
        token = self.options.token
        if token is not None and not printable_token(token):
            raise ValueError("the token must be printable ASCII")

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
        if self.context is None:
            await self._within_deadline(self._verify_server)

    async def _verify_server(self) -> None:
        if self.context is not None:
            return
        trust = self.options.trust
        if self.mode == "ca":
            assert trust.cafile is not None
            self.context = self.pool.ca_context(trust.cafile, trust.certfile, trust.keyfile)
            return
        if self.mode == "pinned-certificate":
            assert trust.cafile is not None
            self.context = self.pool.pinned(trust.cafile.read_text(), trust.certfile, trust.keyfile)
            return
        der = await self._probe()
        seen = hashlib.sha256(der).hexdigest()
        if self.mode == "pin" and not hmac.compare_digest(seen, trust.pin or ""):
            raise Untrusted(
                f"certificate sha256:{seen} does not match the pin sha256:{trust.pin}",
                self.address,
            )
        pem = ssl.DER_cert_to_PEM_cert(der)
        context = self.pool.pinned(pem, trust.certfile, trust.keyfile)
        if self.mode == "binding":
            # The public status, over a connection that trusts exactly the certificate
            # seen, without the token; the token goes out only once the binding holds.
            status = await self._get(context, "/v1/status", token=False, limit=STATUS_LIMIT)
            self._check_binding(der, status)
        self.seen_fingerprint = fingerprint(pem)
        self.seen_certificate = pem
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
                asyncio.open_connection(
                    self.host, self.port, ssl=context, server_hostname=self.server_hostname
                ),
                self.options.connect_timeout,
            )
            try:
                ssl_object = writer.get_extra_info("ssl_object")
                try:
                    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                except ValueError:  # TLS 1.3: the agent's alert undid the finished handshake
                    raise ClosedAfterHandshake("the agent ended the handshake") from None
            finally:
                writer.close()
            if not der:
                raise ProtocolError("no server certificate seen", self.address)
            return bytes(der)

        der: bytes = await self._with_retries(attempt, idempotent=True, what="the TLS probe")
        return der

    # -- requests ------------------------------------------------------------------------
    def _certificate_refused(self, detail: str) -> Unauthenticated:
        """The agent refused the TLS connection for our client certificate (or its absence)."""
        certfile = self.options.trust.certfile
        if certfile is None:
            hint = "the agent requires a client certificate: pass --cert and --key"
        else:
            hint = (
                f"the agent refused our client certificate {certfile}: issued by a CA it "
                "does not trust, expired, or not in its allowlist"
            )
        return Unauthenticated(f"{detail}; {hint}", self.address)

    async def _within_deadline(self, work: Callable[[], Awaitable[T]]) -> T:
        """``work()`` within the per-call deadline (``Options.deadline``): its retries and
        their backoff included. Unreachable when the deadline passes. A call made inside
        another (verifying the server inside a request) shares the outer one's deadline."""
        deadline = self.options.deadline
        if _CALL.get() is not None or deadline is None:
            return await work()
        loop = asyncio.get_running_loop()
        call = _Call(deadline, loop.time() + deadline)
        token = _CALL.set(call)
        try:
            async with asyncio.timeout_at(call.end) as scope:
                return await work()
        except TimeoutError:
            if not scope.expired():
                raise
            raise Unreachable(deadline_message(call.deadline, call), self.address) from None
        finally:
            _CALL.reset(token)
            self.last_call = call

    async def _with_retries(
        self, attempt: Callable[[], Any], idempotent: bool, what: str = "this answer"
    ) -> Any:
        tries = 0
        call = _CALL.get()
        while True:
            if call is not None:
                call.attempts += 1
            try:
                return await attempt()
            except ssl.SSLCertVerificationError as exc:
                raise Untrusted(
                    f"certificate not trusted: {exc.verify_message}", self.address
                ) from None
            except ssl.SSLError as exc:
                reason = exc.reason or str(exc)
                if reason in CLIENT_CERTIFICATE_ALERTS:
                    alert = reason.partition("ALERT_")[2].replace("_", " ").lower()
                    raise self._certificate_refused(f"TLS alert from the agent: {alert}") from None
                raise Unauthenticated(f"TLS handshake refused: {reason}", self.address) from None
            except ClosedAfterHandshake:
                # Not retried: each retry would count as a failure towards the agent's hold-off.
                raise self._certificate_refused(
                    "the agent closed the connection right after the TLS handshake"
                ) from None
            except NotSent as exc:  # connecting failed: nothing was sent
                error: BaseException = exc.__cause__ or exc
                retry = True
            except (Dropped, TimeoutError) as exc:
                error, retry = exc, idempotent
            except TooLarge as exc:
                raise ProtocolError(
                    f"answer larger than {size_text(exc.limit)}, the limit for {what}",
                    self.address,
                ) from None
            except BadHttp as exc:
                raise ProtocolError(f"bad HTTP answer: {exc}", self.address) from None
            except OSError as exc:  # the probe: refused, unreachable, reset before use
                error, retry = exc, True
            reason = str(error) or type(error).__name__
            if call is not None:
                call.last_error = reason
            if not retry or tries >= self.options.retries:
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
            raise HeldOff(
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
        limit: int = RESULT_LIMIT,
    ) -> Any:
        """One API request with the token, its answer at most ``limit`` bytes, within the
        per-call deadline. GETs are retried after a dropped connection, POSTs only when
        the connection never opened (a command must not run twice)."""

        async def call() -> Any:
            await self._verify_server()
            assert self.context is not None
            return await self._send(self.context, method, path, body, timeout, token, limit)

        return await self._within_deadline(call)

    async def _get(
        self, context: ssl.SSLContext | Pinned, path: str, token: bool, limit: int
    ) -> Any:
        return await self._send(context, "GET", path, None, None, token, limit)

    def _request(
        self, method: str, path: str, body: Any, token: bool
    ) -> tuple[list[tuple[str, str]], bytes | None]:
        """The request's header fields and body (h11 checks them again when it sends)."""
        if not path.startswith("/") or not path.isascii() or not path.isprintable() or " " in path:
            raise ValueError(f"not a request path: {path!r}")
        headers = [("Host", self.host_header), ("User-Agent", self.options.user_agent)]
        if token and self.options.token:
            headers.append(("Authorization", f"Bearer {self.options.token}"))
        if not self.keep_alive:
            headers.append(("Connection", "close"))
        if method != "POST":
            return headers, None
        headers.append(("Content-Type", "application/json"))
        return headers, json.dumps(body).encode()

    async def _send(
        self,
        context: ssl.SSLContext | Pinned,
        method: str,
        path: str,
        body: Any,
        timeout: float | None,
        token: bool,
        limit: int,
    ) -> Any:
        headers, payload = self._request(method, path, body, token)
        limit = min(limit, self.pool.max_body)
        name = body.get("name") if method == "POST" and isinstance(body, dict) else None
        what = f"{name} results" if isinstance(name, str) else f"{method} {path}"
        key = (self.host, self.port, context)
        pool = self.pool
        loop = asyncio.get_running_loop()

        async def attempt() -> Any:
            reader = ResponseReader(method, path, headers, payload, limit)
            async with asyncio.timeout(timeout or self.options.timeout):
                connection = pool.take(key, loop.time()) if self.keep_alive else None
                if connection is None:
                    connection = await pool.connect(
                        context,
                        self.host,
                        self.port,
                        self.options.connect_timeout,
                        server_hostname=self.server_hostname,
                    )
                response = await connection.exchange(reader)
            if self.keep_alive and response.keep_alive:
                pool.give_back(connection, loop.time())
            else:
                connection.close()
            return self._decode(response.status, response.body, response.headers.get("retry-after"))

        return await self._with_retries(attempt, idempotent=method == "GET", what=what)

    # -- the API -------------------------------------------------------------------------
    async def status(self) -> Status:
        """The public status (sent without the token)."""
        return Status.parse(
            await self.request("GET", "/v1/status", token=False, limit=STATUS_LIMIT)
        )

    async def list_commands(self) -> list[CommandResult]:
        data = await self.request("GET", "/v1/commands/", limit=HISTORY_LIMIT)
        commands = _require(data, dict, "command list").get("commands")
        return [CommandResult.parse(r) for r in _require(commands, list, "commands")]

    async def get_command(self, result_id: str, limit: int = RESULT_LIMIT) -> CommandResult:
        path = f"/v1/commands/{quote(result_id, safe='')}"
        return CommandResult.parse(await self.request("GET", path, limit=limit))

    async def run(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        check: bool = True,
        limit: int = RESULT_LIMIT,
    ) -> CommandResult:
        """POST a command; raises CommandFailed when it FAILED (unless ``check`` is off).
        Its answer may be at most ``limit`` bytes. An async command comes back RUNNING:
        see ``wait``."""
        command = {"name": name, "params": params or {}}
        result = CommandResult.parse(
            await self.request("POST", "/v1/commands/", command, limit=limit)
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
        """Poll the result at a jittered interval until it is no longer RUNNING; with a
        ``deadline`` (s) Unreachable once it has passed, the poll under way included."""
        loop = asyncio.get_running_loop()
        end = None if deadline is None else loop.time() + deadline
        name = result.command_name
        try:
            async with asyncio.timeout_at(end) as scope:
                while result.running:
                    await asyncio.sleep(interval * random.uniform(0.8, 1.2))
                    result = await self.get_command(result.id)
                    if on_poll is not None:
                        on_poll(result)
        except TimeoutError:
            if not scope.expired():
                raise
            raise Unreachable(f"{name} still running after {deadline:g} s", self.address) from None
        if check and result.status != SUCCEEDED:
            raise CommandFailed(result, self.address)
        return result

    async def get_hardware_info(self, refresh: bool = False) -> Inventory:
        params = {"refresh": True} if refresh else {}
        result = await self.run("poll.get_hardware_info", params, limit=INVENTORY_LIMIT)
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
        result = await self.run("log.collect_system_logs", limit=LOGS_LIMIT)
        encoded = _require((result.command_result or {}).get("system_logs"), str, "system_logs")
        try:
            return base64.b64decode(encoded, validate=True)
        except ValueError:
            raise ProtocolError("system_logs is not base64", self.address) from None


def deadline_message(seconds: float, call: _Call | None, label: str = "deadline") -> str:
    """Why a call ended at its deadline: how long, how many attempts, the last error."""
    parts = [label]
    if call is not None and call.attempts:
        parts.append(f"{call.attempts} attempt{'s' if call.attempts > 1 else ''}")
        parts.append(f"last: {call.last_error}" if call.last_error else "none answered")
    return f"no answer within {seconds:g} s ({'; '.join(parts)})"


def describe(error: BaseException) -> str:
    """One line for an operator."""
    if isinstance(error, AgentError):
        return f"{error.kind}: {error}"
    return f"{type(error).__name__}: {error}"


def macs(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.strip().lower().replace("-", ":") for v in values)
