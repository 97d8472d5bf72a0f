"""Ramdisk figures: size, build time, QEMU start -> first TLS answer, image write rate.

    python -m bench.boot [--boots N] [--image-mib M]

Boots the ramdisk built by tools/build-ramdisk (or TACET_RAMDISK=/path/name) in QEMU
(TCG) over iPXE exactly as tests/e2e does, N times, and writes one raw image of M MiB
through the agent (standby.prepare_image, downloaded through guestfwd). Prints figures;
asserts nothing. Run it alone (on the shared machines: under the heavy-job lock).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from agent.tls import client_context
from conductor import pki
from tests.e2e.harness import (
    IMAGE_HOST,
    VM,
    AgentClient,
    BackgroundApp,
    ImageServer,
    Ramdisk,
    Shape,
    build_image,
    wait_for_agent,
)

NODE = "bench-node"


async def write_image(client: AgentClient, url: str, sha256: str) -> float:
    info = {
        "id": "bench",
        "urls": [url],
        "disk_format": "raw",
        "os_hash_algo": "sha256",
        "os_hash_value": sha256,
    }
    started = time.monotonic()
    status, result = await client.command("standby.prepare_image", {"image_info": info})
    if status != 200:
        raise SystemExit(f"prepare_image: HTTP {status}: {result}")
    if result["command_status"] == "RUNNING":
        result = await client.wait_command(result["id"], 1800)
    if result["command_status"] != "SUCCEEDED":
        raise SystemExit(f"prepare_image failed: {result}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=2)
    parser.add_argument("--image-mib", type=int, default=256)
    args = parser.parse_args()
    ramdisk = Ramdisk.locate()
    mib = 1024 * 1024
    print(f"kernel:    {ramdisk.kernel.stat().st_size / mib:6.1f} MiB  {ramdisk.kernel}")
    print(
        f"initramfs: {ramdisk.initramfs.stat().st_size / mib:6.1f} MiB  {ramdisk.initramfs} (zstd)"
    )
    if "initramfs_unpacked_bytes" in ramdisk.build:
        print(f"unpacked:  {ramdisk.build['initramfs_unpacked_bytes'] / mib:6.0f} MiB")
    if "build_seconds" in ramdisk.build:
        print(f"build:     {ramdisk.build['build_seconds']:6.0f} s (disk-image-create)")
    with tempfile.TemporaryDirectory(prefix="tacet-bench-boot-") as tmp:
        work = Path(tmp)
        pki.init_ca(work / "ca")
        client_cert = pki.issue_client(work / "ca", "conductor")
        bundle = pki.node_bundle(work / "ca", NODE)
        context = client_context(cafile=work / "ca" / "ca.pem")
        context.load_cert_chain(client_cert.cert_path, client_cert.key_path)
        image = build_image(work, size_mib=args.image_mib)
        answers: list[float] = []
        rates: list[float] = []
        images = ImageServer({"image.raw": image.path})
        with BackgroundApp(images.app) as server:
            for n in range(args.boots):
                vm_dir = work / f"boot{n}"
                vm_dir.mkdir()
                # 8 GiB (sparse): with no root-device hint the agent, like IPA, wants >= 4 GiB.
                shape = Shape("virtio", disk_bytes=8 * 1024**3)
                vm = VM(vm_dir, ramdisk, shape, secrets=bundle.cpio())
                vm.guestfwds[(IMAGE_HOST, 80)] = server.port
                vm.start()
                try:
                    client = AgentClient(vm.host_port, context, server_hostname=NODE)
                    seconds = asyncio.run(wait_for_agent(vm, client))
                    answers.append(seconds)
                    print(f"boot {n + 1}: QEMU start -> first TLS answer {seconds:.1f} s")
                    if n == 0:
                        took = asyncio.run(
                            write_image(client, f"http://{IMAGE_HOST}/image.raw", image.sha256)
                        )
                        rates.append(args.image_mib / took)
                        print(
                            f"image write: {args.image_mib} MiB in {took:.1f} s"
                            f" = {rates[-1]:.1f} MiB/s (download + verify + write + sync)"
                        )
                finally:
                    vm.stop()
    print(
        f"QEMU start -> first TLS answer: median {statistics.median(answers):.1f} s"
        f" over {len(answers)} boots (min {min(answers):.1f}, max {max(answers):.1f})"
    )


if __name__ == "__main__":
    main()
