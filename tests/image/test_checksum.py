"""image.checksum: which digest an image_info asks for, checksum files, the Verifier."""

from __future__ import annotations

import hashlib
import re

import pytest

from image.checksum import (
    ChecksumError,
    ChecksumMismatch,
    ChecksumURL,
    Expected,
    Verifier,
    expected_checksum,
    parse_checksum_file,
)
from image.errors import ImageError

DATA = b"tacet image bytes\n" * 100
SHA256 = hashlib.sha256(DATA).hexdigest()
SHA384 = hashlib.sha384(DATA).hexdigest()
SHA512 = hashlib.sha512(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()
URL = "http://images.example/path/disk%20one.img?token=x"


@pytest.mark.parametrize(
    ("algo", "value"), [("sha256", SHA256), ("sha384", SHA384), ("SHA512", SHA512)]
)
def test_os_hash(algo: str, value: str) -> None:
    expected = expected_checksum({"os_hash_algo": algo, "os_hash_value": value.upper()})
    assert expected == Expected(algo.lower(), value, f"os_hash_value ({algo.lower()})")


def test_os_hash_wins_over_checksum() -> None:
    info = {"os_hash_algo": "sha512", "os_hash_value": SHA512, "checksum": MD5}
    assert expected_checksum(info) == Expected("sha512", SHA512, "os_hash_value (sha512)")


@pytest.mark.parametrize("algo", ["sha1", "crc32", "sha3_256"])
def test_os_hash_other_algorithms_refused(algo: str) -> None:
    with pytest.raises(ChecksumError, match=f"unsupported hash algorithm '{algo}'"):
        expected_checksum({"os_hash_algo": algo, "os_hash_value": SHA256})


def test_os_hash_md5_only_when_allowed() -> None:
    info = {"os_hash_algo": "md5", "os_hash_value": MD5}
    with pytest.raises(ChecksumError, match="md5 checksums are refused"):
        expected_checksum(info)
    assert expected_checksum(info, allow_md5=True) == Expected("md5", MD5, "os_hash_value (md5)")


def test_os_hash_incomplete_or_malformed() -> None:
    with pytest.raises(ChecksumError, match="os_hash_value=None"):
        expected_checksum({"os_hash_algo": "sha256"})
    with pytest.raises(ChecksumError, match="64 hex digits expected"):
        expected_checksum({"os_hash_algo": "sha256", "os_hash_value": SHA512})
    with pytest.raises(ChecksumError, match="'zz"):
        expected_checksum({"os_hash_algo": "sha256", "os_hash_value": "zz" * 32})


@pytest.mark.parametrize(
    ("value", "algo"), [(SHA256, "sha256"), (SHA384, "sha384"), (SHA512, "sha512")]
)
def test_checksum_hex_by_length(value: str, algo: str) -> None:
    assert expected_checksum({"checksum": f" {value.upper()}\n"}) == Expected(
        algo, value, "checksum"
    )


def test_checksum_md5_refused_unless_allowed() -> None:
    with pytest.raises(ChecksumError, match=f"'{MD5}'.*md5 checksums are refused"):
        expected_checksum({"checksum": MD5})
    assert expected_checksum({"checksum": MD5}, allow_md5=True) == Expected("md5", MD5, "checksum")


def test_checksum_bad_length_and_missing() -> None:
    with pytest.raises(ChecksumError, match="has 40 hex digits"):
        expected_checksum({"checksum": "a" * 40})
    with pytest.raises(ChecksumError, match="no checksum"):
        expected_checksum({"urls": [URL]})
    with pytest.raises(ChecksumError, match="neither a hex digest"):
        expected_checksum({"checksum": "not-a-digest"})
    with pytest.raises(ChecksumError, match="only http and https"):
        expected_checksum({"checksum": "ftp://host/SHA256SUMS"})
    assert issubclass(ChecksumError, ImageError)


def test_checksum_url() -> None:
    assert expected_checksum({"checksum": "https://h/SHA256SUMS"}) == ChecksumURL(
        "https://h/SHA256SUMS"
    )


def test_checksum_file_matched_by_name() -> None:
    other = hashlib.sha256(b"other").hexdigest()
    text = f"# comment\n{other}  other.img\n{SHA256} *./sub/disk one.img\n\n"
    expected = parse_checksum_file(text, URL, checksum_url="http://h/SUMS")
    assert expected == Expected("sha256", SHA256, "http://h/SUMS")


def test_checksum_file_sha512_and_bare_line() -> None:
    assert parse_checksum_file(f"{SHA512}  disk one.img\n", URL).algorithm == "sha512"
    assert parse_checksum_file(f"\n{SHA256}\n", URL).value == SHA256


def test_checksum_file_without_the_name() -> None:
    with pytest.raises(
        ChecksumError, match=re.escape("http://h/SUMS: no checksum listed for 'disk one.img'")
    ):
        parse_checksum_file(f"{SHA256}  other.img\n", URL, checksum_url="http://h/SUMS")


def test_checksum_file_ambiguous_and_malformed() -> None:
    text = f"{SHA256}  disk one.img\n{SHA512}  disk one.img\n"
    with pytest.raises(ChecksumError, match="different checksums listed"):
        parse_checksum_file(text, URL)
    with pytest.raises(ChecksumError, match="line 2 'garbage here'"):
        parse_checksum_file(f"{SHA256}  disk one.img\ngarbage here\n", URL)
    with pytest.raises(ChecksumError, match="md5 checksums are refused"):
        parse_checksum_file(f"{MD5}  disk one.img\n", URL)


def test_verifier_match_and_reset() -> None:
    verifier = Verifier(Expected("sha256", SHA256, "test"))
    verifier.update(b"garbage")
    verifier.reset()
    for start in range(0, len(DATA), 7):
        verifier.update(DATA[start : start + 7])
    assert verifier.length == len(DATA)
    assert verifier.finish() == SHA256


def test_verifier_mismatch_names_both() -> None:
    verifier = Verifier(Expected("sha512", SHA512, "test"))
    verifier.update(DATA[:-1])
    actual = hashlib.sha512(DATA[:-1]).hexdigest()
    with pytest.raises(ChecksumMismatch) as caught:
        verifier.finish()
    assert SHA512 in str(caught.value) and actual in str(caught.value)
    assert (caught.value.expected, caught.value.actual) == (SHA512, actual)
