"""The conductor's TLS contexts towards agents: always verifying, with session resumption.

Built on the shared policy of :mod:`wire.tls`; the agent's own contexts live in
``agent.tls``.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from wire.tls import apply_policy


class ResumingContext(ssl.SSLContext):
    """A client context that remembers, per server name, the TLS session it last got.

    ``conductor.http.Connection`` runs TLS itself (``wrap_bio``) and passes
    ``session_for(name)`` as ``session=``: a reconnect costs an abbreviated handshake.
    It calls ``remember`` when a connection's first data arrives (TLS 1.3 sends the
    session ticket right after the handshake, before any answer).
    """

    def __init__(self, protocol: int = ssl.PROTOCOL_TLS_CLIENT) -> None:
        super().__init__()  # the protocol is taken by SSLContext.__new__
        self._sessions: dict[str, ssl.SSLSession] = {}
        self.handshakes = 0
        self.resumed = 0

    def session_for(self, server_hostname: str) -> ssl.SSLSession | None:
        return self._sessions.get(server_hostname)

    def handshake_done(self, server_hostname: str, tls: ssl.SSLObject) -> None:
        self.handshakes += 1
        if tls.session_reused:
            self.resumed += 1

    def remember(self, server_hostname: str, tls: ssl.SSLObject) -> None:
        if tls.session_reused and server_hostname in self._sessions:
            # Keep offering the session we hold: reading it again here costs a copy and,
            # with OpenSSL 3.0 and CPython 3.11, leaked about 6 KiB per resumed
            # connection (measured). A rejected ticket means a full handshake, and then
            # the new session is taken.
            return
        session = tls.session
        if session is not None:
            self._sessions[server_hostname] = session

    def sessions_known(self) -> int:
        return len(self._sessions)


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
