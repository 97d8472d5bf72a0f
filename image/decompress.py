"""Streaming decompression of gzip, xz and (when ``zstandard`` is installed) zstd images.

Output is produced in bounded pieces, so a small highly compressed chunk (a disk of
zeros) never turns into gigabytes of memory at once. The checksum is over the
downloaded, compressed bytes, like the image service's ``os_hash_value``.
"""

from __future__ import annotations

import lzma
import zlib
from collections.abc import Iterator
from typing import Any, Protocol

from .formats import FormatError

OUT_CHUNK = 8 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"


def zstd_available() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


class Decoder(Protocol):
    def feed(self, data: bytes | bytearray) -> Iterator[bytes]: ...

    def finish(self) -> Iterator[bytes]: ...


class Gzip:
    """gzip, several members one after the other included (as ``gunzip`` reads them)."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=31)
        self._started = False  # the current member has input

    def feed(self, data: bytes | bytearray) -> Iterator[bytes]:
        while True:
            if self._d.eof:
                rest = self._d.unused_data + data
                if not rest.strip(b"\0"):
                    self._d = _finished_gzip()
                    return  # trailing zeros are padding, as gunzip treats them
                if not rest.startswith(GZIP_MAGIC[: len(rest)]):
                    raise FormatError("gzip image has trailing garbage after the last member")
                self._d = zlib.decompressobj(wbits=31)
                data = rest
            self._started = self._started or bool(data)
            try:
                out = self._d.decompress(data, OUT_CHUNK)
            except zlib.error as exc:
                raise FormatError(f"gzip image is corrupt: {exc}") from None
            if out:
                yield out
            data = self._d.unconsumed_tail
            if self._d.eof:
                self._started = False
                if not self._d.unused_data and not data:
                    return
                continue
            if not data and len(out) < OUT_CHUNK:
                return

    def finish(self) -> Iterator[bytes]:
        yield from self.feed(b"")
        if self._started and not self._d.eof:
            raise FormatError("gzip image is truncated")


def _finished_gzip() -> Any:
    """A decompressor that is at its end with nothing left (after zero padding)."""
    d = zlib.decompressobj(wbits=31)
    d.decompress(zlib.compress(b"", wbits=31))
    return d


class Xz:
    def __init__(self) -> None:
        self._d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)

    def feed(self, data: bytes | bytearray) -> Iterator[bytes]:
        while True:
            if self._d.eof:
                rest = self._d.unused_data + data
                data = b""
                if not rest.strip(b"\0"):
                    return  # stream padding
                if not rest.startswith(XZ_MAGIC[: len(rest)]):
                    raise FormatError("xz image has trailing garbage after the last stream")
                self._d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
                data = rest
            try:
                out = self._d.decompress(data, OUT_CHUNK)
            except lzma.LZMAError as exc:
                raise FormatError(f"xz image is corrupt: {exc}") from None
            data = b""
            if out:
                yield out
            if self._d.eof:
                if not self._d.unused_data:
                    return
                continue
            if self._d.needs_input:
                return

    def finish(self) -> Iterator[bytes]:
        yield from self.feed(b"")
        if not self._d.eof:
            raise FormatError("xz image is truncated")


class Zstd:
    """zstd through the optional ``zstandard`` module (not a hard dependency)."""

    def __init__(self) -> None:
        import zstandard

        self._z: Any = zstandard
        self._d = zstandard.ZstdDecompressor().decompressobj(write_size=OUT_CHUNK)

    def feed(self, data: bytes | bytearray) -> Iterator[bytes]:
        try:
            out = self._d.decompress(data)
        except self._z.ZstdError as exc:
            raise FormatError(f"zstd image is corrupt: {exc}") from None
        for start in range(0, len(out), OUT_CHUNK):
            yield out[start : start + OUT_CHUNK]

    def finish(self) -> Iterator[bytes]:
        if not getattr(self._d, "eof", True):
            raise FormatError("zstd image is truncated")
        return iter(())


def decoder(kind: str) -> Decoder:
    if kind == "gzip":
        return Gzip()
    if kind == "xz":
        return Xz()
    if kind == "zstd":
        if not zstd_available():
            raise FormatError("zstd images need the Python module zstandard, not installed")
        return Zstd()
    raise FormatError(f"no decompressor for {kind}")
