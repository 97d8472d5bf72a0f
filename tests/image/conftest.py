"""Real block devices (loop devices over sparse files) and a misbehaving image server.

Tests here need root and working loop devices, as CI has (it runs as root on Debian).
When the facility is missing they fail with a message saying so: a skip would hide
an untested feature.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from tests.agent.conftest import FakeInventory, start

GIB = 1024**3
MIB = 1024**2


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is required for this test (tools/setup installs it)")
    return path


def run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def loop_devices(tmp_path):
    """Make loop devices of the given sizes (bytes); detached at the end."""
    made: list[str] = []

    def make(size: int, name: str = "disk") -> str:
        need("losetup")
        backing = tmp_path / f"{name}-{len(made)}.img"
        with open(backing, "wb") as handle:
            handle.truncate(size)
        try:
            device = run("losetup", "--find", "--show", "--partscan", str(backing)).strip()
        except (subprocess.CalledProcessError, OSError) as exc:
            pytest.fail(f"loop devices are required (run as root with /dev/loop-control): {exc}")
        made.append(device)
        return device

    yield make
    for device in made:
        subprocess.run(["losetup", "-d", device], check=False)


def disk_entry(name: str, size: int, serial: str) -> dict:
    return {
        "name": name,
        "model": None,
        "size": size,
        "rotational": False,
        "serial": serial,
        "wwn": None,
        "wwn_with_extension": None,
        "wwn_vendor_extension": None,
        "vendor": None,
        "hctl": None,
        "by_path": None,
        "logical_sectors": 512,
        "physical_sectors": 512,
        "tran": "virtio",
    }


class DisksInventory(FakeInventory):
    def __init__(self, disks):
        super().__init__()
        self.disks = disks

    def __call__(self):
        data = super().__call__()
        data["disks"] = list(self.disks)
        return data


@pytest.fixture
async def agent_with(tmp_path):
    """An agent whose inventory lists ``disks``; the disks here are loop devices, so it
    is told it may use them (``allow_loop_devices``) unless a test says otherwise."""
    runs = []

    async def make(disks, **overrides):
        overrides.setdefault("allow_loop_devices", True)
        run_ = await start(
            tmp_path / f"state{len(runs)}", inventory=DisksInventory(disks), **overrides
        )
        runs.append(run_)
        return run_

    yield make
    for run_ in runs:
        await run_.client.close()
        await run_.server.stop("test finished")


@dataclass
class Served:
    """A file the server offers, and how badly it behaves."""

    data: bytes
    drop_after: int | None = None  # close the connection after so many bytes, once
    fail: list[int] = field(default_factory=list)  # statuses answered first
    ranges: bool = True
    piece: int = 0  # >0: send in pieces of this size ...
    delay: float = 0.0  # ... sleeping this long between them
    requests: int = 0
    sent: int = 0  # bytes the server managed to hand to the connection


@pytest.fixture
async def files(aiohttp_server):
    """``files["name"] = Served(...)``; the base URL is ``files.base``."""

    class Files(dict):
        base = ""

    served = Files()

    async def handler(request: web.Request) -> web.StreamResponse:
        item = served.get(request.match_info["name"])
        if item is None:
            return web.Response(status=404)
        item.requests += 1
        if item.fail:
            return web.Response(status=item.fail.pop(0))
        data, status = item.data, 200
        headers = {"Accept-Ranges": "bytes"} if item.ranges else {}
        wanted = request.headers.get("Range")
        if wanted and item.ranges:
            first = int(wanted.removeprefix("bytes=").rstrip("-"))
            headers["Content-Range"] = f"bytes {first}-{len(data) - 1}/{len(data)}"
            data, status = data[first:], 206
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(data)
        await response.prepare(request)
        if item.drop_after is not None:
            await response.write(data[: item.drop_after])
            item.drop_after = None
            assert request.transport is not None
            request.transport.close()
            return response
        step = item.piece or len(data) or 1
        for offset in range(0, len(data), step):
            await response.write(data[offset : offset + step])
            item.sent += len(data[offset : offset + step])
            if item.delay:
                await asyncio.sleep(item.delay)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{name}", handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    served.base = f"http://127.0.0.1:{server.port}"
    return served


def read(device: str, length: int, offset: int = 0) -> bytes:
    with open(device, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def make_gpt_image(path: Path, size: int) -> None:
    """A real GPT disk image made by sgdisk: an ESP and a Linux root partition."""
    need("sgdisk")
    with open(path, "wb") as handle:
        handle.truncate(size)
    run("sgdisk", "-n1:2048:+8M", "-t1:ef00", "-n2:0:0", "-t2:8300", str(path))


ESP_OFFSET = 2048 * 512  # where make_gpt_image puts partition 1 (the ESP)


def mtools(tool: str, *args: str) -> None:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    subprocess.run([need(tool), *args], check=True, capture_output=True, env=env)


def make_uefi_disk(path: Path, size: int, files: dict[str, bytes]) -> None:
    """``make_gpt_image`` with a FAT file system (mkfs.vfat) on its ESP holding ``files``
    (``{"EFI/debian/shimx64.efi": b"..."}``), put there with mtools."""
    make_gpt_image(path, size)
    run(need("mkfs.vfat"), "-n", "ESP", f"--offset={ESP_OFFSET // 512}", str(path), "8192")
    image = f"{path}@@{ESP_OFFSET}"
    made: set[str] = set()
    for name, data in files.items():
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in made:
                mtools("mmd", "-i", image, f"::/{folder}")
                made.add(folder)
        source = path.parent / "esp-file"
        source.write_bytes(data)
        mtools("mcopy", "-i", image, str(source), f"::/{name}")
        source.unlink()
