"""A small writer of the newc ("070701") cpio format, the format of Linux initramfs.

Only what a per-node initrd needs: directories and regular files, owned by root,
with explicit permission bits and one modification time. The layout follows the
kernel's ``Documentation/driver-api/early-userspace/buffer-format.rst``: a 110-byte
ASCII header (magic plus 13 eight-digit hex fields), the NUL-terminated name padded
so the data starts on a 4-byte boundary, the data padded to 4 bytes, and a final
``TRAILER!!!`` entry.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_MAX_FIELD = 0xFFFFFFFF


@dataclass(frozen=True)
class Entry:
    name: str  # relative path, "/"-separated, no "." or ".." components
    mode: int  # full st_mode: file type bits and permission bits
    data: bytes = b""


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | _perm(perm))


def file(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | _perm(perm), data)


def _perm(perm: int) -> int:
    if perm & ~0o7777:
        raise ValueError(f"permission bits out of range: {perm:#o}")
    return perm


def _check_name(name: str) -> bytes:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"cpio entry name must be a plain relative path: {name!r}")
    if name == TRAILER:
        raise ValueError(f"cpio entry name is reserved: {name!r}")
    encoded = name.encode()
    if b"\0" in encoded:
        raise ValueError(f"cpio entry name contains NUL: {name!r}")
    return encoded


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _member(name: bytes, mode: int, ino: int, nlink: int, mtime: int, data: bytes) -> bytes:
    namesize = len(name) + 1
    fields = (
        ino,
        mode,
        0,  # uid
        0,  # gid
        nlink,
        mtime,
        len(data),
        0,  # devmajor
        0,  # devminor
        0,  # rdevmajor
        0,  # rdevminor
        namesize,
        0,  # check (only used by the "070702" crc format)
    )
    for value in fields:
        if not 0 <= value <= _MAX_FIELD:
            raise ValueError(f"cpio header field out of range for {name!r}: {value}")
    header = MAGIC + b"".join(b"%08X" % value for value in fields)
    head = header + name + b"\0"
    return head + _pad(len(head)) + data + _pad(len(data))


def pack(entries: Iterable[Entry], mtime: int = 0) -> bytes:
    """The archive: every entry in order, then the trailer.

    A parent directory must be listed before anything inside it, so an unpacker that
    does not create missing parents (the kernel's) still succeeds on an empty root.
    """
    out: list[bytes] = []
    seen: dict[str, int] = {}
    for ino, entry in enumerate(entries, start=1):
        name = _check_name(entry.name)
        if entry.name in seen:
            raise ValueError(f"duplicate cpio entry: {entry.name!r}")
        parent = entry.name.rpartition("/")[0]
        if parent and not stat.S_ISDIR(seen.get(parent, 0)):
            raise ValueError(f"cpio entry {entry.name!r} comes before its directory {parent!r}")
        if stat.S_ISDIR(entry.mode):
            if entry.data:
                raise ValueError(f"cpio directory entry has data: {entry.name!r}")
            nlink = 2
        elif stat.S_ISREG(entry.mode):
            nlink = 1
        else:
            raise ValueError(f"cpio entry is neither a directory nor a file: {entry.name!r}")
        seen[entry.name] = entry.mode
        out.append(_member(name, entry.mode, ino, nlink, mtime, entry.data))
    out.append(_member(TRAILER.encode(), 0, 0, 1, 0, b""))
    return b"".join(out)
