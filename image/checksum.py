"""Which digest an image must have, and checking it while the bytes stream past.

``image_info`` (docs/protocol.md, "standby") names the expected digest in one of three ways,
tried in this order:

1. ``os_hash_algo`` + ``os_hash_value`` (sha256, sha384, sha512; md5 only when allowed);
2. ``checksum`` as a hex value, the algorithm told by its length
   (64 sha256, 96 sha384, 128 sha512, 32 md5 only when allowed);
3. ``checksum`` as an http(s) URL of a checksum file in ``sha256sum`` format, which the
   caller fetches and hands to :func:`parse_checksum_file` with the image URL.

Everything here is pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import BadInput

ALGORITHMS = ("sha256", "sha384", "sha512")
BY_LENGTH = {64: "sha256", 96: "sha384", 128: "sha512", 32: "md5"}
_HEX = re.compile(r"[0-9a-fA-F]+")
# "<hex>  <name>" (text mode) or "<hex> *<name>" (binary mode), as sha256sum writes them.
_LINE = re.compile(r"^\\?([0-9a-fA-F]+) [ *](.+)$")


class ChecksumError(BadInput):
    """The expected checksum is missing, ambiguous, malformed or not acceptable."""


class ChecksumMismatch(BadInput):
    """The image's digest is not the expected one."""

    def __init__(self, algorithm: str, expected: str, actual: str) -> None:
        super().__init__(f"image checksum mismatch: expected {algorithm} {expected}, got {actual}")
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class Expected:
    """A digest the image must have: ``value`` is lower-case hex."""

    algorithm: str
    value: str
    source: str  # where it came from, for messages


@dataclass(frozen=True)
class ChecksumURL:
    """The checksum is in a file at ``url``; fetch it, then :func:`parse_checksum_file`."""

    url: str


def _check_algorithm(algorithm: str, allow_md5: bool, source: str) -> str:
    algorithm = algorithm.lower().replace("-", "")
    if algorithm == "md5":
        if not allow_md5:
            raise ChecksumError(f"{source}: md5 checksums are refused (md5 is not enabled)")
        return algorithm
    if algorithm not in ALGORITHMS:
        raise ChecksumError(
            f"{source}: unsupported hash algorithm {algorithm!r} "
            f"(accepted: {', '.join(ALGORITHMS)})"
        )
    return algorithm


def _check_hex(value: str, algorithm: str, source: str) -> str:
    length = hashlib.new(algorithm).digest_size * 2
    if not _HEX.fullmatch(value) or len(value) != length:
        raise ChecksumError(
            f"{source}: {value!r} is not a {algorithm} digest ({length} hex digits expected)"
        )
    return value.lower()


def from_hex(value: str, *, allow_md5: bool = False, source: str = "checksum") -> Expected:
    """A bare hex digest, the algorithm told by its length."""
    value = value.strip()
    if not _HEX.fullmatch(value):
        raise ChecksumError(f"{source}: {value!r} is neither a hex digest nor an http(s) URL")
    algorithm = BY_LENGTH.get(len(value))
    if algorithm is None:
        raise ChecksumError(
            f"{source}: {value!r} has {len(value)} hex digits; expected 64 (sha256), "
            "96 (sha384) or 128 (sha512)"
        )
    algorithm = _check_algorithm(algorithm, allow_md5, f"{source} {value!r}")
    return Expected(algorithm, value.lower(), source)


def expected_checksum(
    image_info: Mapping[str, Any], *, allow_md5: bool = False
) -> Expected | ChecksumURL:
    """The expected digest of the image, or the URL of the file that holds it."""
    algo, value = image_info.get("os_hash_algo"), image_info.get("os_hash_value")
    if algo or value:
        if not (algo and value) or not isinstance(algo, str) or not isinstance(value, str):
            raise ChecksumError(
                "os_hash_algo and os_hash_value must be given together as strings "
                f"(os_hash_algo={algo!r}, os_hash_value={value!r})"
            )
        algorithm = _check_algorithm(algo, allow_md5, "os_hash_algo")
        source = f"os_hash_value ({algorithm})"
        return Expected(algorithm, _check_hex(value.strip(), algorithm, source), source)
    checksum = image_info.get("checksum")
    if not checksum:
        raise ChecksumError(
            "image_info has no checksum: give os_hash_algo + os_hash_value or checksum"
        )
    if not isinstance(checksum, str):
        raise ChecksumError(f"checksum must be a string, not {checksum!r}")
    checksum = checksum.strip()
    scheme = urlsplit(checksum).scheme.lower()
    if scheme in ("http", "https"):
        return ChecksumURL(checksum)
    if scheme and not _HEX.fullmatch(checksum):
        raise ChecksumError(f"checksum URL {checksum!r}: only http and https are supported")
    return from_hex(checksum, allow_md5=allow_md5)


def image_file_name(url: str) -> str:
    """The file name an image URL ends with (percent-decoded), as checksum files list it."""
    name = posixpath.basename(unquote(urlsplit(url).path))
    if not name:
        raise ChecksumError(f"image URL {url!r} has no file name to look up in a checksum file")
    return name


def parse_checksum_file(
    text: str, image_url: str, *, checksum_url: str = "checksum file", allow_md5: bool = False
) -> Expected:
    """The digest for ``image_url`` in a ``sha256sum``-format file (or a lone hex line)."""
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if len(lines) == 1 and _HEX.fullmatch(lines[0]):
        return from_hex(lines[0], allow_md5=allow_md5, source=checksum_url)
    name = image_file_name(image_url)
    found: set[str] = set()
    for number, line in enumerate(lines, 1):
        match = _LINE.match(line)
        if match is None:
            raise ChecksumError(
                f"{checksum_url}: line {number} {line[:80]!r} is not '<hex>  <file name>'"
            )
        digest, listed = match.groups()
        if posixpath.basename(listed.strip()) == name:
            found.add(digest.lower())
    if not found:
        raise ChecksumError(f"{checksum_url}: no checksum listed for {name!r}")
    if len(found) > 1:
        raise ChecksumError(
            f"{checksum_url}: different checksums listed for {name!r}: {', '.join(sorted(found))}"
        )
    return from_hex(found.pop(), allow_md5=allow_md5, source=checksum_url)


class Verifier:
    """Hashes the image chunk by chunk; :meth:`finish` compares with the expected digest."""

    def __init__(self, expected: Expected) -> None:
        self.expected = expected
        self.reset()

    def reset(self) -> None:
        """Start over (the download restarted from byte zero)."""
        self._hash = hashlib.new(self.expected.algorithm)
        self.length = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._hash.update(chunk)
        self.length += len(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> str:
        """The digest when it matches; :class:`ChecksumMismatch` naming both otherwise."""
        actual = self._hash.hexdigest()
        if not hmac.compare_digest(actual, self.expected.value):
            raise ChecksumMismatch(self.expected.algorithm, self.expected.value, actual)
        return actual
