"""UEFI boot entries: the ``EFI_LOAD_OPTION`` codec and a writer for an efivarfs directory.

The codec is pure: :func:`encode_load_option` builds the bytes of a ``Boot####``
variable (UEFI specification 2.10, 3.1.3 "Load Options" and 10.3 "Device Path
Nodes"), :func:`decode_load_option` and :func:`decode_boot_order` read the ones the
firmware and other tools left. :class:`EfiVars` is the thin I/O around them, rooted
at a directory given to it (``/sys/firmware/efi/efivars`` on a machine booted in
UEFI mode, a temporary directory in tests and for a local agent).

Why not ``efibootmgr``: it has no option to work on another root (only libefivar's
undocumented ``EFIVARFS_PATH`` environment variable redirects it), it builds the
device path from the running kernel's view of the disk, which a disk image file or a
loop device does not give, and idempotence on top of it means parsing its text
output. Writing the variables directly needs none of that and is testable byte for
byte (the tests still cross-check the bytes with ``efibootmgr`` through that variable).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
DEFAULT_EFIVARS = Path("/sys/firmware/efi/efivars")

# Variable attributes (the first 4 bytes of an efivarfs file).
NON_VOLATILE = 0x1
BOOTSERVICE_ACCESS = 0x2
RUNTIME_ACCESS = 0x4
BOOT_VARIABLE_ATTRIBUTES = NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS

LOAD_OPTION_ACTIVE = 0x1

# Device path node types and subtypes used here.
MEDIA_DEVICE_PATH = 0x04
MEDIA_HARDDRIVE_DP = 0x01
MEDIA_FILEPATH_DP = 0x04
END_DEVICE_PATH = 0x7F
END_ENTIRE_DEVICE_PATH = 0xFF

# Hard drive node: partition format and signature type.
PARTITION_FORMAT_MBR = 0x01
PARTITION_FORMAT_GPT = 0x02
SIGNATURE_TYPE_MBR = 0x01
SIGNATURE_TYPE_GUID = 0x02

_HARD_DRIVE = struct.Struct("<IQQ16sBB")  # after the 4-byte node header: 38 bytes
_NODE_HEADER = struct.Struct("<BBH")
_BOOT_NAME = re.compile(r"^Boot([0-9A-F]{4})$")

# efivarfs marks the files of variables it does not know to be safe to change as
# immutable (chattr +i); Boot#### and BootOrder are on its list, so this is only needed
# on kernels or firmware that treat them otherwise.
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x00000010


class EfiVarError(ValueError):
    """A variable's bytes are not what the specification lays out."""


@dataclass(frozen=True)
class HardDrive:
    """``HD(number, GPT|MBR, signature, start, size)``: the partition holding the loader.

    ``start`` and ``size`` are in logical blocks of the disk; ``signature`` is the GPT
    partition GUID (signature type 2) or the MBR disk signature (type 1).
    """

    number: int
    start: int
    size: int
    signature: uuid.UUID | int

    @property
    def is_gpt(self) -> bool:
        return isinstance(self.signature, uuid.UUID)


@dataclass(frozen=True)
class FilePath:
    """``File(\\EFI\\vendor\\loader.efi)``: the loader's path on that partition."""

    path: str


@dataclass(frozen=True)
class OtherNode:
    """Any node this module does not interpret, kept as its bytes (PciRoot, Sata, ...)."""

    type: int
    subtype: int
    data: bytes


DevicePathNode = HardDrive | FilePath | OtherNode


@dataclass(frozen=True)
class LoadOption:
    attributes: int
    description: str
    device_path: tuple[DevicePathNode, ...]  # without the end node
    optional_data: bytes = b""

    @property
    def active(self) -> bool:
        return bool(self.attributes & LOAD_OPTION_ACTIVE)

    def points_at(self, drive: HardDrive, loader: FilePath) -> bool:
        """Whether this option boots ``loader`` on ``drive``, in short form (HD/File) or
        behind a longer hardware path; file names compare case-insensitively, as FAT does."""
        nodes = self.device_path
        for index, node in enumerate(nodes[:-1]):
            following = nodes[index + 1]
            if (
                node == drive
                and isinstance(following, FilePath)
                and following.path.lower() == loader.path.lower()
            ):
                return True
        return False


# -- encoding --------------------------------------------------------------------------
def _node(kind: int, subtype: int, data: bytes) -> bytes:
    return _NODE_HEADER.pack(kind, subtype, _NODE_HEADER.size + len(data)) + data


def _ucs2(text: str) -> bytes:
    """Null-terminated UCS-2: refuses what UTF-16 would need surrogates for."""
    if any(ord(char) > 0xFFFF for char in text) or "\0" in text:
        raise EfiVarError(f"{text!r} cannot be written as UCS-2")
    return text.encode("utf-16-le") + b"\0\0"


def encode_node(node: DevicePathNode) -> bytes:
    if isinstance(node, HardDrive):
        if isinstance(node.signature, uuid.UUID):
            signature = node.signature.bytes_le
            form, kind = PARTITION_FORMAT_GPT, SIGNATURE_TYPE_GUID
        else:
            signature = struct.pack("<I", node.signature) + bytes(12)
            form, kind = PARTITION_FORMAT_MBR, SIGNATURE_TYPE_MBR
        data = _HARD_DRIVE.pack(node.number, node.start, node.size, signature, form, kind)
        return _node(MEDIA_DEVICE_PATH, MEDIA_HARDDRIVE_DP, data)
    if isinstance(node, FilePath):
        return _node(MEDIA_DEVICE_PATH, MEDIA_FILEPATH_DP, _ucs2(node.path))
    return _node(node.type, node.subtype, node.data)


def encode_device_path(nodes: tuple[DevicePathNode, ...]) -> bytes:
    """The nodes followed by the end-of-entire-path node."""
    body = b"".join(encode_node(node) for node in nodes)
    return body + _node(END_DEVICE_PATH, END_ENTIRE_DEVICE_PATH, b"")


def encode_load_option(option: LoadOption) -> bytes:
    """``EFI_LOAD_OPTION``: attributes, FilePathListLength, description, path, data."""
    path = encode_device_path(option.device_path)
    return (
        struct.pack("<IH", option.attributes, len(path))
        + _ucs2(option.description)
        + path
        + option.optional_data
    )


def encode_boot_order(numbers: tuple[int, ...]) -> bytes:
    return struct.pack(f"<{len(numbers)}H", *numbers)


def loader_option(description: str, drive: HardDrive, loader: FilePath) -> LoadOption:
    """An active entry booting ``loader`` on ``drive``, in the short form ``efibootmgr``
    writes by default: firmware finds the partition by its signature on any disk."""
    return LoadOption(LOAD_OPTION_ACTIVE, description, (drive, loader))


# -- decoding --------------------------------------------------------------------------
def decode_device_path(data: bytes) -> tuple[DevicePathNode, ...]:
    """The nodes of the first device path instance, up to its end node."""
    nodes: list[DevicePathNode] = []
    offset = 0
    while True:
        if offset + _NODE_HEADER.size > len(data):
            raise EfiVarError("device path ends without an end node")
        kind, subtype, length = _NODE_HEADER.unpack_from(data, offset)
        if length < _NODE_HEADER.size or offset + length > len(data):
            raise EfiVarError(f"device path node at {offset} has a bad length {length}")
        body = bytes(data[offset + _NODE_HEADER.size : offset + length])
        offset += length
        if kind == END_DEVICE_PATH:
            return tuple(nodes)
        nodes.append(_decode_node(kind, subtype, body))


def _decode_node(kind: int, subtype: int, body: bytes) -> DevicePathNode:
    if kind == MEDIA_DEVICE_PATH and subtype == MEDIA_HARDDRIVE_DP and len(body) == 38:
        number, start, size, signature, form, sig_type = _HARD_DRIVE.unpack(body)
        if form == PARTITION_FORMAT_GPT and sig_type == SIGNATURE_TYPE_GUID:
            return HardDrive(number, start, size, uuid.UUID(bytes_le=signature))
        if form == PARTITION_FORMAT_MBR and sig_type == SIGNATURE_TYPE_MBR:
            return HardDrive(number, start, size, struct.unpack_from("<I", signature)[0])
    if kind == MEDIA_DEVICE_PATH and subtype == MEDIA_FILEPATH_DP and len(body) % 2 == 0:
        text = body.decode("utf-16-le", errors="replace")
        return FilePath(text.split("\0", 1)[0])
    return OtherNode(kind, subtype, body)


def decode_load_option(data: bytes) -> LoadOption:
    if len(data) < 6:
        raise EfiVarError("a load option is at least 6 bytes long")
    attributes, path_length = struct.unpack_from("<IH", data)
    end = 6
    while True:
        if end + 2 > len(data):
            raise EfiVarError("the description has no terminating null")
        if data[end : end + 2] == b"\0\0":
            break
        end += 2
    description = bytes(data[6:end]).decode("utf-16-le", errors="replace")
    path_start = end + 2
    if path_start + path_length > len(data):
        raise EfiVarError("FilePathListLength runs past the end of the option")
    device_path = decode_device_path(data[path_start : path_start + path_length])
    return LoadOption(attributes, description, device_path, bytes(data[path_start + path_length :]))


def decode_boot_order(data: bytes) -> tuple[int, ...]:
    if len(data) % 2:
        raise EfiVarError("BootOrder has an odd number of bytes")
    return struct.unpack(f"<{len(data) // 2}H", data)


def boot_name(number: int) -> str:
    return f"Boot{number:04X}"


# -- the efivarfs directory ------------------------------------------------------------
class EfiVars:
    """The global-GUID variables in an efivarfs directory (or a directory laid out like
    one: ``<Name>-<guid>`` files holding 4 attribute bytes, then the value)."""

    def __init__(self, root: Path = DEFAULT_EFIVARS) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / f"{name}-{EFI_GLOBAL_VARIABLE}"

    def read(self, name: str) -> bytes | None:
        """The value without its attributes; None when the variable does not exist."""
        try:
            raw = self.path(name).read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) < 4:
            raise EfiVarError(f"{name}: shorter than its 4 attribute bytes")
        return raw[4:]

    def write(self, name: str, value: bytes, attributes: int = BOOT_VARIABLE_ATTRIBUTES) -> None:
        """Set the variable in one ``write`` (efivarfs takes attributes and value at once)."""
        path = self.path(name)
        data = struct.pack("<I", attributes) + value
        try:
            self._write_once(path, data)
        except PermissionError:
            if not self._clear_immutable(path):
                raise
            self._write_once(path, data)

    @staticmethod
    def _write_once(path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(errno.EIO, f"short write to {path}: {written} of {len(data)} bytes")

    @staticmethod
    def _clear_immutable(path: Path) -> bool:
        """Clear the immutable flag of an existing file; False when it was not set."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            flags = struct.unpack("<i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(4)))[0]
            if not flags & FS_IMMUTABLE_FL:
                return False
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<i", flags & ~FS_IMMUTABLE_FL))
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def boot_numbers(self) -> list[int]:
        """The numbers of the ``Boot####`` variables present, ascending."""
        suffix = f"-{EFI_GLOBAL_VARIABLE}"
        numbers = []
        for entry in os.listdir(self.root):
            if entry.endswith(suffix):
                match = _BOOT_NAME.match(entry[: -len(suffix)])
                if match:
                    numbers.append(int(match.group(1), 16))
        return sorted(numbers)

    def boot_options(self) -> dict[int, LoadOption | None]:
        """Every ``Boot####`` decoded; None for one whose bytes do not decode (kept as is)."""
        options: dict[int, LoadOption | None] = {}
        for number in self.boot_numbers():
            value = self.read(boot_name(number))
            try:
                options[number] = None if value is None else decode_load_option(value)
            except EfiVarError:
                options[number] = None
        return options

    def boot_order(self) -> tuple[int, ...]:
        value = self.read("BootOrder")
        return () if value is None else decode_boot_order(value)


@dataclass(frozen=True)
class BootEntry:
    number: int
    option: LoadOption
    created: bool


def ensure_first(efivars: EfiVars, wanted: list[LoadOption]) -> list[BootEntry]:
    """Make each wanted option a ``Boot####`` entry and put them first in BootOrder, in
    the order given; every other entry and its place in the order is left alone.

    An entry that already boots the same loader on the same partition is reused (made
    active if it was not), so calling this again changes nothing.
    """
    existing = efivars.boot_options()
    used = set(existing) | set(efivars.boot_order())
    entries: list[BootEntry] = []
    for option in wanted:
        drive, loader = option.device_path[0], option.device_path[-1]
        assert isinstance(drive, HardDrive) and isinstance(loader, FilePath)
        reused = _same_target(existing, drive, loader)
        if reused is not None:
            number, found = reused
            if not found.active:
                found = replace(found, attributes=found.attributes | LOAD_OPTION_ACTIVE)
                efivars.write(boot_name(number), encode_load_option(found))
            entries.append(BootEntry(number, found, created=False))
            continue
        number = _free_number(used)
        efivars.write(boot_name(number), encode_load_option(option))
        used.add(number)
        existing[number] = option
        entries.append(BootEntry(number, option, created=True))
    ours = tuple(dict.fromkeys(entry.number for entry in entries))
    before = efivars.boot_order()
    order = ours + tuple(n for n in before if n not in ours)
    if order != before or efivars.read("BootOrder") is None:
        efivars.write("BootOrder", encode_boot_order(order))
    return entries


def _same_target(
    options: dict[int, LoadOption | None], drive: HardDrive, loader: FilePath
) -> tuple[int, LoadOption] | None:
    for number, option in options.items():
        if option is not None and option.points_at(drive, loader):
            return number, option
    return None


def _free_number(used: set[int]) -> int:
    """The lowest ``Boot####`` number neither present nor named in BootOrder."""
    for number in range(0x10000):
        if number not in used:
            return number
    raise EfiVarError("all 65536 Boot#### numbers are taken")
