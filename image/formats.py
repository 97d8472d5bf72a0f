"""What an image is, told by its bytes rather than by what the request claims.

Pure functions over the first bytes of an image. The qcow2 header is parsed here, before
``qemu-img`` ever sees the file, because a qcow2 can name a backing file or an external
data file (any path on the agent, such as ``/dev/sda`` or ``/etc/shadow``) that
``qemu-img convert`` would happily read into the disk being deployed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import BadInput

HEAD_BYTES = 4096
COMPRESSED = ("gzip", "xz", "zstd")
QCOW2_MAGIC = b"QFI\xfb"
_MAGICS = (
    (0, b"\x1f\x8b", "gzip"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"\x28\xb5\x2f\xfd", "zstd"),
    (0, QCOW2_MAGIC, "qcow2"),
    (0, b"KDMV", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"conectix", "vpc"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0x40, b"\x7f\x10\xda\xbe", "vdi"),
    (0, b"BZh", "bzip2"),
)
# qcow2 incompatible feature bits (docs/interop/qcow2.txt in QEMU)
_DIRTY, _CORRUPT, _EXTERNAL_DATA, _COMPRESSION_TYPE, _EXTENDED_L2 = (1 << b for b in range(5))
_KNOWN_INCOMPATIBLE = _DIRTY | _CORRUPT | _EXTERNAL_DATA | _COMPRESSION_TYPE | _EXTENDED_L2
_EXT_END, _EXT_DATA_FILE = 0, 0x44415441


class FormatError(BadInput):
    """The image is not of a permitted format, or is unsafe to convert."""


def detect(head: bytes) -> str:
    """``gzip``, ``xz``, ``zstd``, ``qcow2``, ``vmdk``, ... or ``raw`` for anything else."""
    for offset, magic, name in _MAGICS:
        if head[offset : offset + len(magic)] == magic:
            return name
    return "raw"


@dataclass(frozen=True)
class Qcow2:
    version: int
    virtual_size: int
    cluster_bits: int
    backing_file: bool
    encrypted: bool
    external_data_file: bool
    incompatible_features: int


def parse_qcow2(head: bytes) -> Qcow2:
    """The header fields that decide whether converting is safe (``head`` = first 4 KiB)."""
    if len(head) < 72 or head[:4] != QCOW2_MAGIC:
        raise FormatError("not a qcow2 image (no QFI magic)")
    version, backing_offset, backing_size, cluster_bits, size, crypt = struct.unpack_from(
        ">IQIIQI", head, 4
    )
    if version not in (2, 3):
        raise FormatError(f"qcow2 version {version} is not supported")
    incompatible, data_file_ext = 0, False
    if version == 3:
        if len(head) < 104:
            raise FormatError("qcow2 v3 header is truncated")
        incompatible = struct.unpack_from(">Q", head, 72)[0]
        header_length = struct.unpack_from(">I", head, 100)[0]
        data_file_ext = _has_extension(head, header_length, _EXT_DATA_FILE)
    else:
        data_file_ext = _has_extension(head, 72, _EXT_DATA_FILE)
    return Qcow2(
        version=version,
        virtual_size=size,
        cluster_bits=cluster_bits,
        backing_file=backing_offset != 0 or backing_size != 0,
        encrypted=crypt != 0,
        external_data_file=bool(incompatible & _EXTERNAL_DATA) or data_file_ext,
        incompatible_features=incompatible,
    )


def _has_extension(head: bytes, offset: int, wanted: int) -> bool:
    """Walk the header extensions (type, length, data padded to 8) for ``wanted``."""
    while offset + 8 <= len(head):
        kind, length = struct.unpack_from(">II", head, offset)
        if kind == _EXT_END:
            return False
        if kind == wanted:
            return True
        offset += 8 + (length + 7) // 8 * 8
    return False


def check_qcow2(info: Qcow2) -> None:
    """Refuse what ``qemu-img convert`` must never be given from an untrusted image."""
    if info.backing_file:
        raise FormatError("refusing a qcow2 image with a backing file")
    if info.external_data_file:
        raise FormatError("refusing a qcow2 image with an external data file")
    if info.encrypted:
        raise FormatError("refusing an encrypted qcow2 image")
    unknown = info.incompatible_features & ~_KNOWN_INCOMPATIBLE
    if unknown:
        raise FormatError(f"qcow2 image has unknown incompatible features {unknown:#x}")
    if info.incompatible_features & _CORRUPT:
        raise FormatError("qcow2 image is marked corrupt")


def check_permitted(kind: str, declared: str | None, permitted: tuple[str, ...]) -> None:
    """The bytes' format must be permitted and agree with ``disk_format`` when given."""
    if kind not in permitted:
        raise FormatError(
            f"image format {kind} is not permitted (permitted: {', '.join(permitted)})"
        )
    if declared not in (None, "", kind):
        raise FormatError(f"image_info says disk_format {declared} but the image is {kind}")
