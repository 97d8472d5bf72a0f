"""Converting a downloaded, inspected image onto the disk with ``qemu-img convert``.

Only called after :mod:`image.formats` has checked the header (no backing file, no
external data file) and the format is permitted; the source format is always given
with ``-f`` so qemu-img never probes. ``-n`` writes into the existing device (or test
file) instead of recreating it; ``-W`` lets writes go out of order, which is faster.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from .errors import ImageError

_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class ConvertError(ImageError):
    """qemu-img is missing or failed."""


def convert_command(source: Path | str, target: str, fmt: str, block_device: bool) -> list[str]:
    # -t none (O_DIRECT) only where the target can do it: files on tmpfs cannot.
    cache = ["-t", "none"] if block_device else []
    options = ["-p", "-f", fmt, "-O", "raw", "-n", "-W", *cache]
    return ["qemu-img", "convert", *options, str(source), target]


async def convert(
    source: Path | str, target: str, fmt: str, on_percent: Callable[[float], None]
) -> None:
    if shutil.which("qemu-img") is None:
        raise ConvertError(f"{fmt} images need qemu-img (Debian package qemu-utils)")
    block = stat.S_ISBLK(os.stat(target).st_mode)
    process = await asyncio.create_subprocess_exec(
        *convert_command(source, target, fmt, block),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    errors = asyncio.ensure_future(process.stderr.read())
    try:
        while chunk := await process.stdout.read(4096):
            for match in _PERCENT.finditer(chunk):
                on_percent(float(match.group(1)))
        code = await process.wait()
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        raise
    message = (await errors).decode(errors="replace").strip()
    if code != 0:
        raise ConvertError(f"qemu-img convert failed ({code}): {message[-2000:]}")
