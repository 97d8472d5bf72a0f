"""Streaming decompression: any chunking gives the same bytes; damage is an error."""

from __future__ import annotations

import gzip
import lzma
import os

import pytest

from image.decompress import OUT_CHUNK, decoder, zstd_available
from image.formats import FormatError

COMPRESSORS = {"gzip": gzip.compress, "xz": lzma.compress}


def run(kind, blob, step):
    d = decoder(kind)
    out = []
    for i in range(0, len(blob), step):
        pieces = list(d.feed(blob[i : i + step]))
        assert all(len(p) <= OUT_CHUNK for p in pieces)
        out += pieces
    out += list(d.finish())
    return b"".join(out)


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_roundtrip_any_chunking(kind):
    compress = COMPRESSORS[kind]
    data = os.urandom(300_000) + bytes(30 * 1024 * 1024) + b"end"  # zeros: bounded output
    blob = compress(data)
    for step in (7, 65536, len(blob)):
        assert run(kind, blob, step) == data
    assert run(kind, compress(b"hi" * 50), 1) == b"hi" * 50


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_concatenated_streams_and_padding(kind):
    compress = COMPRESSORS[kind]
    blob = compress(b"a" * 10) + compress(b"b" * 20) + bytes(100)
    assert run(kind, blob, 3) == b"a" * 10 + b"b" * 20


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_truncated_and_garbage_refused(kind):
    blob = COMPRESSORS[kind](os.urandom(100_000))
    with pytest.raises(FormatError, match="truncated"):
        run(kind, blob[:-100], 4096)
    with pytest.raises(FormatError, match="trailing garbage"):
        run(kind, blob + b"garbage", 4096)


def test_zstd_is_optional():
    if zstd_available():
        import zstandard

        blob = zstandard.ZstdCompressor().compress(b"z" * 100_000)
        assert run("zstd", blob, 1000) == b"z" * 100_000
    else:
        with pytest.raises(FormatError, match="zstandard"):
            decoder("zstd")
