"""The token binding: proof that the holder of the pre-shared token serves a certificate.

The agent publishes ``hmac_sha256(token, "tacet-binding-v1:" + spki_sha256)`` in its
status; a conductor that holds the token checks it against the certificate it saw
before sending anything secret. docs/security.md ("Token binding") has the details.
"""

from __future__ import annotations

import hashlib
import hmac

BINDING_VERSION = 1
BINDING_LABEL = "tacet-binding-v1:"


def binding_hmac(token: str, spki_hex: str) -> str:
    message = (BINDING_LABEL + spki_hex).encode("ascii")
    return hmac.new(token.encode("utf-8"), message, hashlib.sha256).hexdigest()


def token_digest(token: str) -> str:
    """What the agent keeps of a token: its SHA-256, compared in constant time."""
    return hashlib.sha256(token.encode()).hexdigest()
