"""The TLS policy both sides apply, and the verifying client context for other parties.

Every context Tacet builds starts here: the agent's listener (``agent.tls``), the
conductor's contexts for agents (``conductor.tls``) and the client context the agent
and ``image/`` use towards ironic's API and image servers.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def minimum_version(version: str) -> ssl.TLSVersion:
    """``"1.3"`` or ``"1.2"`` (the default floor) as an ``ssl.TLSVersion``."""
    return ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2


def apply_policy(context: ssl.SSLContext, min_version: str = "1.2") -> ssl.SSLContext:
    """The floor every Tacet context has: TLS 1.2 or newer, no compression."""
    context.minimum_version = minimum_version(min_version)
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def client_context(
    cafile: Path | str | None = None,
    cadata: str | None = None,
    insecure: bool = False,
    min_version: str = "1.2",
) -> ssl.SSLContext:
    """Context for talking to other parties (ironic API, image servers, tests).
    Verification is on unless ``insecure`` (ironic's ``ipa-insecure``) is explicitly set."""
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None, cadata=cadata)
    apply_policy(context, min_version)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
