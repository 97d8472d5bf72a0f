"""Writing a raw image stream onto the target block device, and wiping a failed one."""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

from .errors import BadInput

WRITE_BLOCK = 8 * 1024 * 1024  # large aligned writes: block devices like them
DIRECT_ALIGN = 4096
WIPE_BYTES = 1024 * 1024


class ImageTooLarge(BadInput):
    """The image does not fit on the target."""


class DiskWriter:
    """Writes a stream of chunks from offset 0 in large aligned blocks (one thread only).

    Full blocks go through an ``O_DIRECT`` descriptor when the target allows it (no page
    cache churn, the disk sees 8 MiB writes as they come); the unaligned tail goes
    through a normal descriptor. :meth:`finish` fsyncs. ``limit`` (the device size by
    default) turns an oversized image into :class:`ImageTooLarge` instead of a short
    write or a growing file.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        direct: bool = True,
        limit: int | None = None,
        room: str | None = None,
        block: int = WRITE_BLOCK,
    ) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        self.direct_fd = -1
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.direct_fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC | os.O_DIRECT)
            except OSError:
                self.direct_fd = -1  # tmpfs and friends: plain writes
        self.limit = device_size(self.path) if limit is None else limit
        self.room = room or f"the target {self.path} ({self.limit} bytes)"
        self.buffer = mmap.mmap(-1, block)  # page aligned, as O_DIRECT needs
        self.block = block
        self.fill = 0
        self.written = 0  # bytes handed to the kernel, from offset 0
        self.started = False  # a write to the target was attempted: it may have changed

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            room = self.block - self.fill
            take = min(room, len(view))
            self.buffer[self.fill : self.fill + take] = view[:take]
            self.fill += take
            view = view[take:]
            if self.fill == self.block:
                self._write(self.fill)

    def check_size(self, size: int) -> None:
        if size > self.limit:
            raise ImageTooLarge(f"the image ({size} bytes) does not fit: {self.room}")

    def _write(self, size: int) -> None:
        if self.written + size > self.limit:
            raise ImageTooLarge(f"the image is larger than {self.room}")
        self.started = True
        data = memoryview(self.buffer)[:size]
        try:
            if self.direct_fd >= 0 and size % DIRECT_ALIGN == 0:
                try:
                    _pwrite_all(self.direct_fd, data, self.written)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    os.close(self.direct_fd)  # the device refuses O_DIRECT after all
                    self.direct_fd = -1
                    _pwrite_all(self.fd, data, self.written)
            else:
                _pwrite_all(self.fd, data, self.written)
        finally:
            data.release()
        self.written += size
        self.fill = 0

    def reset(self) -> None:
        self.fill = 0
        self.written = 0

    def finish(self) -> None:
        """Write the tail and wait until the device has everything (fsync)."""
        if self.fill:
            self._write(self.fill)
        os.fsync(self.fd)

    def close(self) -> None:
        for fd in (self.fd, self.direct_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.direct_fd = -1
        self.buffer.close()


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


def device_size(path: Path | str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def wipe_ends(path: Path | str) -> None:
    """Zero the first and last MiB so a half-written image can never boot as if good."""
    size = device_size(path)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        zeros = bytes(min(WIPE_BYTES, size))
        _pwrite_all(fd, zeros, 0)
        if size > WIPE_BYTES:
            _pwrite_all(fd, zeros, size - len(zeros))
        os.fsync(fd)
    finally:
        os.close(fd)


def mounted_devices(mounts_text: str) -> set[str]:
    """Device paths that hold a mounted filesystem, from /proc/mounts."""
    return {line.split()[0] for line in mounts_text.splitlines() if line.startswith("/")}


def holds_mounts(device: str, mounted: set[str]) -> bool:
    """The device itself or one of its partitions (sda1, nvme0n1p2, ...) is mounted."""
    return any(
        m == device or (m.startswith(device) and m[len(device) :].lstrip("p").isdigit())
        for m in mounted
    )
