"""The conductor's TLS contexts towards agents: always verifying, with session resumption.

Built on the shared policy of :mod:`wire.tls`; the agent's own contexts live in
``agent.tls``.
"""

from __future__ import annotations

import hmac
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

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
    cafile: Path | str,
    certfile: Path | str | None = None,
    keyfile: Path | str | None = None,
    check_hostname: bool = True,
    min_version: str = "1.2",
) -> ResumingContext:
    """The conductor's context for agents whose certificates a CA issued: always verifying,
    the name checked unless ``check_hostname`` is off. Agents trusted by their exact
    certificate share ``pinning_context`` instead. The client certificate is optional.
    """
    context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    apply_policy(context, min_version)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(cafile))
    context.check_hostname = check_hostname
    if certfile is not None:
        context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    return context


def pinning_context(
    certfile: Path | str | None = None,
    keyfile: Path | str | None = None,
    min_version: str = "1.2",
) -> ResumingContext:
    """The one context shared by every agent trusted by its exact certificate.

    OpenSSL still checks that the agent holds the key of the certificate it presents
    (the handshake's signature); which certificate it must be is checked by ``Pinned``
    on each connection as soon as the handshake is done, before any request is written.
    One context for all: a context of its own per pinned agent cost the conductor
    18 KiB each (1,000 agents: 18 MiB), its own trust store and session cache included.
    """
    context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    apply_policy(context, min_version)
    context.check_hostname = False  # the pin identifies the agent, not its address
    context.verify_mode = ssl.CERT_NONE  # replaced by Pinned.check, never skipped
    if certfile is not None:
        context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    return context


def pinned_mismatch(message: str) -> ssl.SSLCertVerificationError:
    """The error a failed exact comparison raises: handled as any verification failure."""
    error = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    error.verify_code = 0
    error.verify_message = message
    return error


@dataclass(frozen=True)
class Pinned:
    """An agent trusted by its exact certificate, over the shared ``pinning_context``.

    Takes the place of an ``ssl.SSLContext`` wherever the conductor connects
    (``conductor.http``): the connection compares the certificate the agent served
    (also on a resumed session, whose certificate the session carries) byte for byte
    with this one, and its validity period with the clock, before it is used. Equal
    pins over the same context are the same key for kept-alive connections.
    """

    context: ResumingContext
    certificate: bytes  # DER
    not_before: float  # the certificate's validity period, seconds since the epoch
    not_after: float

    @classmethod
    def of(cls, context: ResumingContext, pem: str) -> Pinned:
        """The one certificate in ``pem``; ValueError when it is not exactly one."""
        certificates = x509.load_pem_x509_certificates(pem.encode())
        if len(certificates) != 1:
            raise ValueError(f"a pin is one certificate, not {len(certificates)}")
        certificate = certificates[0]
        return cls(
            context,
            certificate.public_bytes(serialization.Encoding.DER),
            certificate.not_valid_before_utc.timestamp(),
            certificate.not_valid_after_utc.timestamp(),
        )

    def check(self, served: bytes | None, now: float | None = None) -> None:
        """SSLCertVerificationError unless ``served`` (DER) is the pinned certificate,
        within its validity period."""
        if served is None or not hmac.compare_digest(served, self.certificate):
            raise pinned_mismatch("not the pinned certificate")
        now = time.time() if now is None else now
        if now < self.not_before:
            raise pinned_mismatch("certificate is not yet valid")
        if now > self.not_after:
            raise pinned_mismatch("certificate has expired")


def probe_context(
    certfile: Path | str | None = None, keyfile: Path | str | None = None
) -> ssl.SSLContext:
    """Only for reading an agent's certificate before trusting it (pin, binding, TOFU).

    It verifies nothing, so the conductor sends no secret over it: it compares the
    certificate it saw with the pin (or checks the binding, or records it for TOFU) and
    then talks to the agent only through ``Pinned`` (exactly that certificate).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    apply_policy(context)
    if certfile is not None:  # an agent using mutual TLS refuses the handshake without it
        context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    return context
