"""Running the agent from a per-node bundle, the initrd ``tacet pki node-bundle`` writes.

The bundle is what iPXE appends to the ramdisk as a second initrd: the kernel unpacks
it over ``/``, giving ``etc/tacet/`` (client CA, server certificate and key, token,
settings). On a workstation, ``tacet-agent --bundle FILE`` reads the same file into
a private temporary directory and uses its ``etc/tacet`` as the configuration
directory, so nothing has to be unpacked by hand or as root into ``/etc``.

The newc format is read here rather than with a library: it is a 110-byte ASCII
header per entry and two paddings, no maintained pure-Python reader exists, the
libarchive bindings would bring a C library into the ramdisk, and the conductor's
writer is on the other side of the wire (the agent never imports the conductor).
Only what a bundle holds is accepted: directories and regular files under
``etc/tacet/``; anything else refuses the whole bundle.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGICS = (b"070701", b"070702")  # newc, and newc with checksums (same layout)
HEADER = 110
TRAILER = "TRAILER!!!"
ROOT = "etc/tacet"
GZIP_MAGIC = b"\x1f\x8b"
MAX_BYTES = 16 * 1024 * 1024  # a bundle is a few KiB: refuse to read a disk image


class BundleError(ValueError):
    """The bundle cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class Member:
    name: str
    mode: int  # st_mode: type and permission bits
    data: bytes


def _align(offset: int) -> int:
    return offset + (-offset % 4)


def parse_newc(data: bytes) -> list[Member]:
    """The members of a newc cpio archive, up to its trailer (pure; raises BundleError)."""
    members: list[Member] = []
    offset = 0
    while True:
        header = data[offset : offset + HEADER]
        if len(header) < HEADER:
            raise BundleError("the archive ends before its trailer (truncated?)")
        if header[:6] not in MAGICS:
            raise BundleError(f"not a newc cpio archive (no 070701 header at byte {offset})")
        try:
            fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise BundleError(f"malformed cpio header at byte {offset}") from None
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_end = offset + HEADER + namesize
        raw_name = data[offset + HEADER : name_end]
        if namesize < 1 or len(raw_name) < namesize or raw_name[-1:] != b"\0":
            raise BundleError(f"malformed cpio entry name at byte {offset}")
        try:
            name = raw_name[:-1].decode()
        except UnicodeDecodeError:
            raise BundleError(f"cpio entry name is not UTF-8 at byte {offset}") from None
        start = _align(name_end)
        body = data[start : start + size]
        if len(body) < size:
            raise BundleError(f"cpio entry {name!r} is truncated")
        if name == TRAILER:
            return members
        members.append(Member(name, mode, body))
        offset = _align(start + size)


def checked_name(name: str) -> str:
    """``name`` as a relative path inside ``etc/tacet`` (or one of its parents)."""
    plain = name.removeprefix("./")
    parts = plain.split("/")
    if not plain or plain.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise BundleError(f"refusing entry {name!r}: not a plain relative path")
    if plain not in ("etc", ROOT) and not plain.startswith(ROOT + "/"):
        raise BundleError(f"refusing entry {name!r}: outside {ROOT}/")
    return plain


def extract(members: list[Member], into: Path) -> Path:
    """Write the members under ``into``; the ``etc/tacet`` directory they make."""
    for member in members:
        if member.name in (".", "./") and stat.S_ISDIR(member.mode):
            continue  # the root itself, as "find . | cpio -o -H newc" lists it
        name = checked_name(member.name)
        target = into / name
        if stat.S_ISDIR(member.mode):
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
        elif stat.S_ISREG(member.mode):
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Kept from the bundle (the token and key are 0600), never group/other-writable.
            perm = stat.S_IMODE(member.mode) & 0o755
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(target, flags, perm)
            except FileExistsError:
                raise BundleError(f"refusing entry {member.name!r}: listed twice") from None
            with os.fdopen(fd, "wb") as handle:
                handle.write(member.data)
            os.chmod(target, perm)  # whatever the umask
        else:
            raise BundleError(f"refusing entry {member.name!r}: not a file or directory")
    config_dir = into / ROOT
    if not config_dir.is_dir():
        raise BundleError(f"the bundle holds no {ROOT}/")
    return config_dir


def gunzipped(data: bytes) -> bytes:
    """A gzip-compressed bundle (as ``tacet pki node-bundle`` writes it) inflated, bounded."""
    if data[:2] != GZIP_MAGIC:
        return data
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        plain = inflate.decompress(data, MAX_BYTES + 1)
    except zlib.error as exc:
        raise BundleError(f"not a valid gzip file: {exc}") from None
    if len(plain) > MAX_BYTES:
        raise BundleError(f"inflates past {MAX_BYTES} bytes: not a node bundle")
    if not inflate.eof:
        raise BundleError("the gzip data is truncated")
    return plain


@contextlib.contextmanager
def unpacked(bundle: Path) -> Iterator[Path]:
    """The bundle's ``etc/tacet`` in a private (0700) temporary directory, removed after."""
    try:
        with open(bundle, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise BundleError(f"cannot read it: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise BundleError(f"larger than {MAX_BYTES} bytes: not a node bundle")
    members = parse_newc(gunzipped(data))
    with tempfile.TemporaryDirectory(prefix="tacet-bundle-") as directory:
        root = Path(directory)
        os.chmod(root, 0o700)
        yield extract(members, root)
