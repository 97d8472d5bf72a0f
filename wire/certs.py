"""Certificate fingerprints and the SubjectPublicKeyInfo, without an X.509 library.

Both sides print and compare these: the agent shows its fingerprint on the console,
the conductor pins it. Walking the DER by hand keeps ``cryptography`` off the agent's
start path (its import costs seconds under emulation).
"""

from __future__ import annotations

import hashlib
import ssl


def fingerprint(cert_pem: str) -> str:
    """SHA-256 of the DER certificate, upper-case colon-separated hex."""
    der = ssl.PEM_cert_to_DER_cert(cert_pem)
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _der_element(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of content, end of element) of the DER element at ``offset``."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[offset]
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, start, end


def spki_der(cert_der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of an X.509 certificate, found by walking its DER.

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ... } ... }.
    """
    tag, start, _end = _der_element(cert_der, 0)
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, offset, _tbs_end = _der_element(cert_der, start)
    if tag != 0x30:
        raise ValueError("not a certificate")
    if cert_der[offset] == 0xA0:  # explicit version
        offset = _der_element(cert_der, offset)[2]
    for _field in range(5):  # serial, signature algorithm, issuer, validity, subject
        offset = _der_element(cert_der, offset)[2]
    tag, _start, end = _der_element(cert_der, offset)
    if tag != 0x30:
        raise ValueError("malformed certificate")
    return cert_der[offset:end]


def spki_sha256(cert_pem: str) -> str:
    """Lower-case hex SHA-256 of the certificate's DER SubjectPublicKeyInfo."""
    return hashlib.sha256(spki_der(ssl.PEM_cert_to_DER_cert(cert_pem))).hexdigest()
