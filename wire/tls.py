"""The TLS policy both sides apply, and the verifying client context for other parties.

Every context Tacet builds starts here: the agent's listener (``agent.tls``), the
conductor's contexts for agents (``conductor.tls``) and the client context the agent
and ``image/`` use towards ironic's API and image servers. The policy is explicit so
that it does not depend on how Python or OpenSSL were built (a distribution's default
cipher list may still carry CBC, SHA-1 or static-RSA suites).
"""

from __future__ import annotations

import ssl
from pathlib import Path

# TLS 1.2: forward secrecy (ECDHE) and AEAD (AES-GCM, ChaCha20-Poly1305) only, for ECDSA
# and RSA certificates; named one by one so no keyword expands differently elsewhere.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
)
# TLS 1.3: Python's ssl cannot choose these (no SSL_CTX_set_ciphersuites), so they are
# OpenSSL's defaults; every TLS 1.3 suite is AEAD with forward secrecy by design.
TLS13_CIPHERS = (
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_GCM_SHA256",
)


def minimum_version(version: str) -> ssl.TLSVersion:
    """``"1.3"`` or ``"1.2"`` (the default floor) as an ``ssl.TLSVersion``."""
    return ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2


def apply_policy(context: ssl.SSLContext, min_version: str = "1.2") -> ssl.SSLContext:
    """What every Tacet context has: TLS 1.2 or newer, the TLS 1.2 suites above only,
    no compression."""
    context.minimum_version = minimum_version(min_version)
    context.set_ciphers(":".join(TLS12_CIPHERS))
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def client_context(
    cafile: Path | str | None = None,
    cadata: str | None = None,
    insecure: bool = False,
    min_version: str = "1.2",
) -> ssl.SSLContext:
    """Context for talking to other parties (ironic API, image servers, tests), with the
    same policy as our own wire: a server offering only CBC or non-ECDHE suites fails
    the handshake. Verification is on unless ``insecure`` (ironic's ``ipa-insecure``)
    is explicitly set."""
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None, cadata=cadata)
    apply_policy(context, min_version)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
