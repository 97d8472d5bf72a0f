"""Small, forgiving readers for attribute files under a (possibly recorded) root.

Collectors read every file through these helpers, so a test can point them at a
recorded tree and a missing or unreadable attribute becomes ``None`` instead of an
exception.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_ATTRIBUTE_BYTES = 65536


def read_text(path: str | os.PathLike[str]) -> str | None:
    """Contents of an attribute file without the trailing newline, or None."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_ATTRIBUTE_BYTES)
    except OSError:
        return None
    return data.decode("utf-8", "replace").rstrip("\n")


def read_stripped(path: str | os.PathLike[str]) -> str | None:
    """Contents with surrounding whitespace removed; empty becomes None."""
    text = read_text(path)
    if text is None:
        return None
    text = text.strip()
    return text or None


def read_int(path: str | os.PathLike[str]) -> int | None:
    text = read_stripped(path)
    if text is None:
        return None
    try:
        return int(text, 0) if text.startswith("0x") else int(text)
    except ValueError:
        return None


def read_bytes(path: str | os.PathLike[str]) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_ATTRIBUTE_BYTES)
    except OSError:
        return None


def link_name(path: str | os.PathLike[str]) -> str | None:
    """Basename of a symlink's target (for ``driver`` links), even when dangling."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def list_dir(path: str | os.PathLike[str]) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def parse_uevent(text: str | None) -> dict[str, str]:
    """``KEY=value`` lines of a sysfs ``uevent`` file."""
    result: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            result[key.strip()] = value.strip()
    return result


def resolve(path: Path) -> Path:
    """Resolve symlinks lexically; works inside recorded trees with missing targets."""
    return Path(os.path.realpath(path))
