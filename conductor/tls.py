"""The conductor's TLS contexts towards agents: always verifying, with session resumption.

Built on the shared policy of :mod:`wire.tls`; the agent's own contexts live in
``agent.tls``.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path
from typing import Any

from wire.tls import apply_policy


class _RememberingSSLObject(ssl.SSLObject):
    """Hands its TLS session to its context once the first data arrives (TLS 1.3 sends
    the session ticket right after the handshake, before any answer)."""

    _tacet_context: ResumingContext | None = None
    _tacet_key: str | None = None

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        data = super().read(len, buffer)
        context = self._tacet_context
        if context is not None and data:
            self._tacet_context = None  # once per connection: the getter is not free
            context._connected(self)
        return data


class ResumingContext(ssl.SSLContext):
    """A client context that offers each server the TLS session it last got from it.

    asyncio's SSL transport has no ``session`` argument, so each connection's session is
    remembered by server name (when its first data arrives) and handed to ``wrap_bio``
    for the next connection to that name: a reconnect costs an abbreviated handshake.
    """

    def __init__(self, protocol: int = ssl.PROTOCOL_TLS_CLIENT) -> None:
        super().__init__()  # the protocol is taken by SSLContext.__new__
        self.sslobject_class = _RememberingSSLObject
        self._sessions: dict[str, ssl.SSLSession] = {}
        self.handshakes = 0
        self.resumed = 0

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        key = server_hostname.decode() if isinstance(server_hostname, bytes) else server_hostname
        if key is not None and session is None and not server_side:
            session = self._sessions.get(key)
        try:
            obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        except ValueError:  # a session from another context or an expired one
            obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname)
        if key is not None and not server_side and isinstance(obj, _RememberingSSLObject):
            obj._tacet_context, obj._tacet_key = self, key
        return obj

    def _connected(self, obj: _RememberingSSLObject) -> None:
        self.handshakes += 1
        if obj.session_reused:
            self.resumed += 1
            if obj._tacet_key in self._sessions:
                # Keep offering the session we hold: reading it again here costs a copy
                # and, with OpenSSL 3.0 and CPython 3.11, leaked about 6 KiB per resumed
                # connection (measured). A rejected ticket means a full handshake, and
                # then the new session is taken below.
                return
        session = obj.session
        if session is not None and obj._tacet_key is not None:
            self._sessions[obj._tacet_key] = session

    def sessions_known(self) -> int:
        return len(self._sessions)


CONDUCTOR_READ_BUFFER = 16 * 1024 + 512


_read_buffers = threading.local()  # one per thread: each event loop runs in one thread


def _shared_read_buffer(size: int) -> memoryview:
    view: memoryview | None = getattr(_read_buffers, "view", None)
    if view is None or len(view) < size:
        view = memoryview(bytearray(size))
        _read_buffers.view = view
    return view


def limit_tls_read_buffer(size: int = CONDUCTOR_READ_BUFFER) -> None:
    """Make asyncio's TLS connections read through one shared ``size``-byte buffer.

    asyncio's SSLProtocol zero-fills a ``max_size`` (256 KiB) bytearray per connection:
    a conductor keeping 5,000 agents alive would hold 1.25 GiB in read buffers alone.
    Agent answers are small, so a few TLS records per read is plenty. The buffer is
    only a landing place: ``buffer_updated`` copies what ``recv_into`` put there into
    the connection's own TLS input in the same callback, with no await in between, so
    all connections of a thread can share one (at 1,000 kept-alive connections that is
    16 MiB less). Process-wide; the conductor calls it (the agent, serving one
    conductor, keeps asyncio's default).
    """
    import asyncio.sslproto

    protocol: Any = asyncio.sslproto.SSLProtocol
    protocol.max_size = size
    if getattr(protocol, "_tacet_shared_buffer", False):
        return
    original = protocol.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._ssl_buffer_view = _shared_read_buffer(self.max_size)
        self._ssl_buffer = self._ssl_buffer_view.obj

    protocol.__init__ = __init__
    protocol._tacet_shared_buffer = True


def conductor_context(
    *,
    cafile: Path | str | None = None,
    cadata: str | None = None,
    certfile: Path | str | None = None,
    keyfile: Path | str | None = None,
    check_hostname: bool = True,
    min_version: str = "1.2",
) -> ResumingContext:
    """The conductor's context for talking to agents: always verifying.

    ``cafile`` is a CA (or an agent's own certificate); ``cadata`` is one pinned agent
    certificate. A pinned certificate is its own trust anchor (partial chain), so it
    may be a leaf issued by a CA, and the name check is skipped only then: the pin
    identifies the server, not its address. The client certificate is optional.
    """
    if cafile is None and cadata is None:
        raise ValueError("a conductor context needs a CA or a pinned certificate")
    context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    apply_policy(context, min_version)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(cafile) if cafile else None, cadata=cadata)
    if cadata is not None:
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.check_hostname = False
    else:
        context.check_hostname = check_hostname
    if certfile is not None:
        context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    return context


def probe_context(
    certfile: Path | str | None = None, keyfile: Path | str | None = None
) -> ssl.SSLContext:
    """Only for reading an agent's certificate before trusting it (pin, binding, TOFU).

    It verifies nothing, so the conductor sends no secret over it: it compares the
    certificate it saw with the pin (or checks the binding, or records it for TOFU) and
    then talks to the agent only through ``conductor_context(cadata=<that certificate>)``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    apply_policy(context)
    if certfile is not None:  # an agent using mutual TLS refuses the handshake without it
        context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    return context
