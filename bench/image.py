"""Image write throughput: Tacet (sha256 verified) next to curl | dd, in the same run.

A 2 GiB raw image (half random, half zeros, in 4 MiB pieces) and its gzip are served
from 127.0.0.1 by aiohttp's FileResponse (sendfile) in its own process, and written to
a loop device (``losetup --direct-io=on`` over a file; a plain file with --target file).
Rounds alternate Tacet and the plain pipeline; medians are printed with the ratio
(target >= 0.90) and CPU seconds per GiB of image (the writer's own process and its
children; the server is not counted). Run it alone on the machine: other load skews
the figures:

    .venv/bin/python bench/image.py [--size-mib 2048] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ports import free_port  # noqa: E402

MIB = 1024 * 1024
GIB = 1024 * MIB


def warm(path: Path) -> None:
    """Read the source once so both contenders are served from the page cache."""
    with open(path, "rb") as handle:
        while handle.read(8 * MIB):
            pass


def make_images(directory: Path, size_mib: int) -> tuple[Path, Path]:
    raw, gz = directory / f"image-{size_mib}.raw", directory / f"gzimage-{size_mib}.gz"
    if not raw.exists() or raw.stat().st_size != size_mib * MIB:
        print(f"making {raw} ...", flush=True)
        with open(raw, "wb") as handle:
            for index in range(size_mib // 4):
                handle.write(os.urandom(4 * MIB) if index % 2 == 0 else bytes(4 * MIB))
        gz.unlink(missing_ok=True)
    if not gz.exists():
        print(f"making {gz} ...", flush=True)
        with open(gz, "wb") as out:
            subprocess.run(["gzip", "-1", "-c", str(raw)], stdout=out, check=True)
    return raw, gz


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


SERVER = """
import sys
from aiohttp import web
root = sys.argv[1]
async def serve(request):
    return web.FileResponse(root + "/" + request.match_info["name"])
app = web.Application()
app.router.add_get("/{name}", serve)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None)
"""


@contextlib.contextmanager
def server(directory: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(directory), str(port)])
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait()


@contextlib.contextmanager
def target(directory: Path, kind: str, size: int) -> Iterator[str]:
    backing = directory / "target.img"
    with open(backing, "wb") as handle:
        handle.truncate(size)
    if kind == "file":
        yield str(backing)
        return
    loop = subprocess.run(
        ["losetup", "--find", "--show", "--direct-io=on", str(backing)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of a child and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


TACET = """
import asyncio, sys, time
sys.path.insert(0, sys.argv[4])
from image.download import download
from image.sink import StreamSink
from image.writer import DiskWriter
async def main():
    start = time.perf_counter()
    sink = StreamSink(DiskWriter(sys.argv[2], direct=sys.argv[6] == "direct"))
    try:
        info = {"urls": [sys.argv[1]], "os_hash_algo": "sha256", "os_hash_value": sys.argv[3]}
        await download(info, sink)
        await sink.finish()
    finally:
        sink.close()
    with open(sys.argv[5], "w") as out:
        out.write(str(time.perf_counter() - start))
asyncio.run(main())
"""


def compare(
    url: str, device: str, digest: str, pipeline: str, rounds: int, size: int, direct: bool
) -> None:
    inner = Path(f"/tmp/tacet-bench-inner-{os.getpid()}")
    mode = "direct" if direct else "buffered"
    tacet = [sys.executable, "-c", TACET, url, device, digest, str(ROOT), str(inner), mode]
    plain = ["bash", "-o", "pipefail", "-c", pipeline.format(url=url, target=device)]
    results: dict[str, list[tuple[float, float]]] = {"tacet": [], "plain": []}
    inside: list[float] = []
    for _ in range(rounds):
        for name, command in (("tacet", tacet), ("plain", plain)):
            results[name].append(timed(command))
            if name == "tacet":
                inside.append(float(inner.read_text()))
    inner.unlink(missing_ok=True)
    gib = size / GIB
    medians = {}
    for name, samples in results.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        medians[name] = wall
        label = f"tacet (sha256, {mode})" if name == "tacet" else pipeline.split("{url}")[0] + "..."
        print(
            f"  {label:28} {size / MIB / wall:8.0f} MiB/s  {wall:6.2f} s  "
            f"{cpu / gib:5.2f} CPU s/GiB  (runs: {', '.join(f'{w:.2f}' for w, _ in samples)})"
        )
    print(f"  plain: {pipeline.format(url='URL', target='TARGET')}")
    write = statistics.median(inside)
    print(
        f"  tacet without interpreter start-up (the agent is already running): "
        f"{size / MIB / write:.0f} MiB/s, {write:.2f} s"
    )
    print(
        f"  ratio tacet/plain throughput: {medians['plain'] / write:.2f} (target >= 0.90); "
        f"counting Python start-up: {medians['plain'] / medians['tacet']:.2f}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/tacet-bench-image"))
    parser.add_argument("--target", choices=("loop", "file"), default="loop")
    parser.add_argument("--skip-gzip", action="store_true")
    parser.add_argument(
        "--buffered",
        action="store_true",
        help="Tacet writes through the page cache + fsync instead of O_DIRECT",
    )
    args = parser.parse_args()
    if shutil.which("curl") is None:
        print("curl is needed for the comparison", file=sys.stderr)
        return 1
    args.workdir.mkdir(parents=True, exist_ok=True)
    raw, gz = make_images(args.workdir, args.size_mib)
    size = raw.stat().st_size
    warm(raw)
    warm(gz)
    print(f"image {size / MIB:.0f} MiB, gzip {gz.stat().st_size / MIB:.0f} MiB; "
          f"target: {args.target}; cpus: {os.cpu_count()}")  # fmt: skip
    with server(args.workdir) as base, target(args.workdir, args.target, size + 64 * MIB) as dev:
        print(f"raw image -> {dev}")
        compare(
            f"{base}/{raw.name}",
            dev,
            sha256_file(raw),
            "curl -s {url} | dd of={target} bs=4M oflag=direct iflag=fullblock status=none",
            args.rounds,
            size,
            not args.buffered,
        )
        if not args.skip_gzip:
            print(f"gzip image -> {dev}")
            compare(
                f"{base}/{gz.name}",
                dev,
                sha256_file(gz),
                "curl -s {url} | gunzip | dd of={target} bs=4M oflag=direct iflag=fullblock "
                "status=none",
                args.rounds,
                size,
                not args.buffered,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
