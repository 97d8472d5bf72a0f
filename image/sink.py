"""The download sink that writes a raw (or gzip/xz/zstd-compressed raw) image to disk.

The first bytes decide the format: compressed streams go through a decompression
thread, raw streams straight to the writing thread, and anything else (qcow2, vmdk,
...) is refused before a single byte reaches the disk. Decompressed output is checked
the same way, so a gzip of a qcow2 is not written as if it were raw.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .decompress import Decoder, decoder
from .download import Progress
from .formats import COMPRESSED, HEAD_BYTES, FormatError, detect
from .pipeline import Stage
from .writer import DiskWriter


class StreamSink:
    def __init__(
        self,
        writer: DiskWriter,
        *,
        progress: Progress | None = None,
        inspect: bool = True,
        declared: str | None = None,
    ) -> None:
        """``inspect=False`` stores the bytes as they come (a qcow2 into a temp file),
        once their first bytes show the ``declared`` format when one is given.
        ``progress`` tells the download size, checked against the room before writing.
        Inspecting, ``declared`` is the request's ``disk_format`` (None or raw), named
        when refusing."""
        self.writer = writer
        self.declared = declared
        self.head_checked = inspect or declared is None  # as-is: no head to wait for
        self.progress = progress
        self.inspect = inspect
        self.kind: str | None = None if inspect else "as-is"
        self.head = bytearray()
        self.decoder: Decoder | None = None
        self.decoded_head: bytes | None = None
        self.write_stage = Stage(writer.feed, "write")
        self.decode_stage: Stage | None = None

    @property
    def written(self) -> int:
        return self.writer.written + self.writer.fill

    def _check_total(self) -> None:
        """Raw or stored as-is: the download size is the image size; refuse early."""
        total = self.progress.total if self.progress is not None else None
        if total is not None:
            self.writer.check_size(total)

    async def write(self, chunk: bytes | bytearray) -> None:
        if self.kind == "as-is" and not self.written:
            self._check_total()
        if not self.head_checked:
            self.head += chunk
            if len(self.head) < HEAD_BYTES:
                return
            chunk, self.head = bytes(self.head), bytearray()
            self._check_declared(chunk)
        if self.kind is None:
            self.head += chunk
            if len(self.head) < HEAD_BYTES:
                return
            chunk, self.head = bytes(self.head), bytearray()
            self._start(chunk)
        if self.decode_stage is not None:
            await self.decode_stage.put(chunk)
        else:
            await self.write_stage.put(chunk)

    def _start(self, head: bytes) -> None:
        self.kind = detect(head)
        if self.kind in COMPRESSED:
            self.decoder = decoder(self.kind)
            self.decode_stage = Stage(self._decode, "decompress")
        elif self.kind == "raw":
            self._check_total()
        else:
            raise FormatError(self._refusal(self.kind))

    def _check_declared(self, head: bytes) -> None:
        """Stored as-is: the first bytes must be of the declared format, so a mislabelled
        image fails at its first 4 KiB rather than after its whole download."""
        self.head_checked = True
        kind = detect(head)
        if kind != self.declared:
            raise FormatError(
                f"image_info says disk_format {self.declared} but the image is {kind}"
            )

    def _refusal(self, kind: str) -> str:
        if self.declared == "raw":
            return f"the image is {kind}, but disk_format says raw: it cannot be streamed"
        if kind == "qcow2":
            return (
                "the image is qcow2 but no disk_format was given: only raw images "
                "(or gzip, xz or zstd of one) are streamed; declare disk_format qcow2 "
                "to have it converted"
            )
        return f"the image is {kind}, not raw: it cannot be streamed"

    def _decode(self, chunk: bytes | bytearray | None) -> None:
        """Decompression thread: ``None`` means the end of the stream."""
        assert self.decoder is not None
        pieces = self.decoder.finish() if chunk is None else self.decoder.feed(chunk)
        for piece in pieces:
            if self.decoded_head is None:
                self.decoded_head = piece[:HEAD_BYTES]
                inner = detect(self.decoded_head)
                if inner != "raw":
                    raise FormatError(f"the image is {inner} compressed with {self.kind}, not raw")
            self.write_stage.put_blocking(piece)

    async def reset(self) -> None:
        """The download starts over from byte zero."""
        if self.decode_stage is not None:
            await self.decode_stage.discard()
            self.decode_stage.close()
            self.decode_stage = None
        await self.write_stage.discard()
        self.writer.reset()
        self.kind = None if self.inspect else "as-is"
        self.head_checked = self.inspect or self.declared is None
        self.head = bytearray()
        self.decoder = None
        self.decoded_head = None

    async def finish(self) -> None:
        """Everything received is decoded, written and fsynced when this returns."""
        if not self.head_checked:  # stored as-is, smaller than HEAD_BYTES
            head, self.head = bytes(self.head), bytearray()
            self._check_declared(head)
            if head:
                await self._put(head)
        if self.kind is None:  # an image smaller than HEAD_BYTES
            head, self.head = bytes(self.head), bytearray()
            self._start(head)
            if head:
                await self._put(head)
        if self.decode_stage is not None:
            await self.decode_stage.put(None)
            await self.decode_stage.drain()
        await self.write_stage.drain()
        await asyncio.get_running_loop().run_in_executor(None, self.writer.finish)

    async def _put(self, chunk: bytes | bytearray) -> None:
        stage = self.decode_stage or self.write_stage
        await stage.put(chunk)

    def close(self) -> None:
        for stage in (self.decode_stage, self.write_stage):
            if stage is not None:
                stage.close()
        self.writer.close()

    def status(self) -> dict[str, Any]:
        return {"format": self.kind if self.kind != "as-is" else None, "written": self.written}
