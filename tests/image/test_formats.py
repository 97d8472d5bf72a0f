"""Format detection and the qcow2 header checks, on images qemu-img makes."""

from __future__ import annotations

import gzip
import lzma
import struct

import pytest

from image.formats import (
    FormatError,
    check_permitted,
    check_qcow2,
    detect,
    parse_qcow2,
)
from tests.image.conftest import need, run


def qcow2(tmp_path, name, *options):
    need("qemu-img")
    path = tmp_path / name
    run("qemu-img", "create", "-f", "qcow2", *options, str(path), "64M")
    return path.read_bytes()[:4096]


def test_detect_by_magic():
    assert detect(gzip.compress(b"x")) == "gzip"
    assert detect(lzma.compress(b"x")) == "xz"
    assert detect(b"\x28\xb5\x2f\xfd" + bytes(10)) == "zstd"
    assert detect(b"QFI\xfb" + bytes(100)) == "qcow2"
    assert detect(b"KDMV" + bytes(100)) == "vmdk"
    assert detect(b"vhdxfile" + bytes(100)) == "vhdx"
    assert detect(bytes(0x40) + b"\x7f\x10\xda\xbe") == "vdi"
    assert detect(bytes(4096)) == "raw"
    assert detect(b"") == "raw"


def test_plain_qcow2_is_safe(tmp_path):
    info = parse_qcow2(qcow2(tmp_path, "a.qcow2"))
    assert info.virtual_size == 64 * 1024 * 1024
    assert not info.backing_file and not info.external_data_file and not info.encrypted
    check_qcow2(info)


def test_backing_file_refused(tmp_path):
    qcow2(tmp_path, "base.qcow2")
    head = qcow2(tmp_path, "child.qcow2", "-b", str(tmp_path / "base.qcow2"), "-F", "qcow2")
    info = parse_qcow2(head)
    assert info.backing_file
    with pytest.raises(FormatError, match="backing file"):
        check_qcow2(info)


def test_external_data_file_refused(tmp_path):
    head = qcow2(tmp_path, "ext.qcow2", "-o", f"data_file={tmp_path / 'data.raw'}")
    info = parse_qcow2(head)
    assert info.external_data_file
    with pytest.raises(FormatError, match="external data file"):
        check_qcow2(info)
    # the data-file header extension alone (feature bit cleared) is refused too
    cleared = bytearray(head)
    struct.pack_into(">Q", cleared, 72, 0)
    assert parse_qcow2(bytes(cleared)).external_data_file


def test_encrypted_and_unknown_features_refused(tmp_path):
    head = bytearray(qcow2(tmp_path, "a.qcow2"))
    struct.pack_into(">I", head, 32, 1)  # crypt_method AES
    with pytest.raises(FormatError, match="encrypted"):
        check_qcow2(parse_qcow2(bytes(head)))
    head = bytearray(qcow2(tmp_path, "b.qcow2"))
    struct.pack_into(">Q", head, 72, 1 << 40)
    with pytest.raises(FormatError, match="unknown incompatible"):
        check_qcow2(parse_qcow2(bytes(head)))
    with pytest.raises(FormatError, match="no QFI magic"):
        parse_qcow2(bytes(200))


def test_permitted_formats():
    check_permitted("qcow2", "qcow2", ("raw", "qcow2"))
    with pytest.raises(FormatError, match="vmdk is not permitted"):
        check_permitted("vmdk", "vmdk", ("raw", "qcow2"))
    with pytest.raises(FormatError, match="says disk_format qcow2 but the image is raw"):
        check_permitted("raw", "qcow2", ("raw", "qcow2"))
