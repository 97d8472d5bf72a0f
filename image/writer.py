"""Writing a raw image stream onto the target block device, and wiping a failed one."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

WRITE_BLOCK = 8 * 1024 * 1024  # large aligned writes: block devices like them
WIPE_BYTES = 1024 * 1024


class BlockWriter:
    """A download sink that writes to a device (or file) that already exists.

    Writes happen in the default executor so the event loop keeps answering
    ``/v1/status`` during a multi-GB image.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        self.buffer = bytearray()
        self.offset = 0
        self.written = 0

    async def _flush(self, final: bool = False) -> None:
        size = len(self.buffer) if final else len(self.buffer) // WRITE_BLOCK * WRITE_BLOCK
        if not size:
            return
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        offset = self.offset
        await asyncio.get_running_loop().run_in_executor(None, _pwrite_all, self.fd, data, offset)
        self.offset += size
        self.written += size

    async def write(self, chunk: bytes) -> None:
        self.buffer += chunk
        if len(self.buffer) >= WRITE_BLOCK:
            await self._flush()

    async def reset(self) -> None:
        self.buffer.clear()
        self.offset = 0

    async def finish(self) -> None:
        """Write what is buffered and wait until the device has it (fsync)."""
        await self._flush(final=True)
        await asyncio.get_running_loop().run_in_executor(None, os.fsync, self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
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
