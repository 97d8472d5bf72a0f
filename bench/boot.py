"""Ramdisk figures: size, build time, QEMU start -> first TLS answer, image write rate.

    python -m bench.boot [--boots N] [--image-mib M] [--boot-over http|tftp] [--kernel-args A]

Boots the ramdisk built by tools/build-ramdisk (or TACET_RAMDISK=/path/name) in QEMU
(TCG) over iPXE exactly as tests/e2e does, N times, and writes one raw image of M MiB
through the agent (standby.prepare_image, downloaded through guestfwd). Prints figures;
asserts nothing. Run it alone on the machine: other load skews the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from conductor import cpio, pki
from tests.e2e.harness import (
    IMAGE_HOST,
    VM,
    AgentClient,
    BackgroundApp,
    ImageServer,
    Ramdisk,
    Shape,
    boot_and_wait,
    build_image,
)
from wire.tls import client_context

NODE = "bench-node"


async def first_inventory(client: AgentClient, disk_serial: str, started_at: float) -> float:
    """Seconds from QEMU's start until get_hardware_info lists the VM's disk by serial.

    The first answer can come before udev has described every device; this is the figure
    a conductor's next step (checking it has the right machine) actually waits for.
    """
    while True:
        status, result = await client.command("poll.get_hardware_info")
        if status == 200 and result["command_status"] == "SUCCEEDED":
            serials = [d.get("serial") for d in result["command_result"]["disks"]]
            if disk_serial in serials:
                return time.monotonic() - started_at
        if time.monotonic() - started_at > 600:
            raise SystemExit(f"no inventory with disk {disk_serial}: {status} {result}")
        await asyncio.sleep(0.2)


def host_probe_ms() -> float:
    """A fixed CPU-bound loop on the host, in ms: how fast the (shared) host runs now.

    TCG turns host speed straight into guest speed; on a shared machine the same image
    boots seconds apart from one hour to the next. Printed with each boot so figures from
    different runs can be compared.
    """
    started = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i
    return (time.perf_counter() - started) * 1000


def cpu_ticks() -> list[int]:
    """The host's /proc/stat CPU line (user, nice, system, idle, iowait, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def steal_percent(before: list[int], after: list[int]) -> float:
    """Share of the host's CPU time its hypervisor gave to others between two samples."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    return 100 * delta[7] / max(1, sum(delta))


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
    parser.add_argument("--image-mib", type=int, default=256, help="0: no image write")
    parser.add_argument("--boot-over", choices=("http", "tftp"), default="http")
    parser.add_argument("--kernel-args", default="", help="appended to the kernel command line")
    parser.add_argument(
        "--modules-load",
        default="",
        help="experiment: modules for /etc/modules-load.d, added to the node initrd (so"
        " systemd-modules-load loads them before udev's coldplug does)",
    )
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
    # TACET_BENCH_KEEP=1 keeps the work directory (consoles, pcaps) for a look afterwards.
    keep = bool(os.environ.get("TACET_BENCH_KEEP"))
    tmp = tempfile.mkdtemp(prefix="tacet-bench-boot-")
    with contextlib.ExitStack() as cleanup:
        if not keep:
            cleanup.callback(shutil.rmtree, tmp)
        work = Path(tmp)
        pki.init_ca(work / "ca")
        client_cert = pki.issue_client(work / "ca", "conductor")
        bundle = pki.node_bundle(work / "ca", NODE)
        context = client_context(cafile=work / "ca" / "ca.pem")
        context.load_cert_chain(client_cert.cert_path, client_cert.key_path)
        image = build_image(work, size_mib=max(args.image_mib, 8))
        answers: list[float] = []
        inventories: list[float] = []
        from_ipxe: list[float] = []
        to_kernel: list[float] = []
        rates: list[float] = []
        probes: list[float] = []
        secrets = bundle.initrd()
        if args.modules_load:
            conf = "\n".join(args.modules_load.split()) + "\n"
            secrets += cpio.pack(
                [
                    cpio.directory("etc"),
                    cpio.directory("etc/modules-load.d"),
                    cpio.file("etc/modules-load.d/bench.conf", conf.encode()),
                ]
            )
        images = ImageServer({"image.raw": image.path})
        with BackgroundApp(images.app) as server:
            for n in range(args.boots):
                vm_dir = work / f"boot{n}"
                vm_dir.mkdir()
                # 8 GiB (sparse): with no root-device hint the agent, like IPA, wants >= 4 GiB.
                shape = Shape("virtio", disk_bytes=8 * 1024**3)
                vm = VM(
                    vm_dir,
                    ramdisk,
                    shape,
                    kernel_args=args.kernel_args,
                    secrets=secrets,
                    boot_over=args.boot_over,
                )
                vm.guestfwds[(IMAGE_HOST, 80)] = server.port
                probes.append(host_probe_ms())
                ticks = cpu_ticks()
                try:
                    client, seconds = boot_and_wait(
                        vm, lambda port: AgentClient(port, context, server_hostname=NODE)
                    )
                    steal = steal_percent(ticks, cpu_ticks())
                    answers.append(seconds)
                    ipxe, linux = vm.since_start("ipxe"), vm.since_start("linux")
                    line = f"boot {n + 1}: QEMU start -> first TLS answer {seconds:.1f} s"
                    if ipxe is not None:
                        from_ipxe.append(seconds - ipxe)
                        line += (
                            f"; iPXE banner at {ipxe:.1f} s, iPXE -> answer {from_ipxe[-1]:.1f} s"
                        )
                    if linux is not None:
                        to_kernel.append(linux)
                        line += f"; kernel's first line at {linux:.1f} s"
                    inventories.append(
                        asyncio.run(first_inventory(client, shape.disk_serial, vm.started_at))
                    )
                    line += f"; inventory with the disk's serial at {inventories[-1]:.1f} s"
                    print(line, flush=True)
                    print(f"  host: probe {probes[-1]:.0f} ms before the boot, steal {steal:.0f}%")
                    steps = sorted((at - vm.started_at, name) for name, at in vm.milestones.items())
                    print("  console: " + ", ".join(f"{name} {t:.1f}" for t, name in steps))
                    if n == 0 and args.image_mib > 0:
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
    for label, values in (
        ("QEMU start -> first TLS answer", answers),
        ("iPXE banner -> first TLS answer", from_ipxe),
        ("QEMU start -> kernel's first line", to_kernel),
        ("QEMU start -> get_hardware_info with the disk", inventories),
    ):
        if values:
            print(
                f"{label}: median {statistics.median(values):.1f} s over {len(values)} boots"
                f" (min {min(values):.1f}, max {max(values):.1f}; boot over {args.boot_over})"
            )
    if probes:
        print(
            f"host probe (lower is faster): median {statistics.median(probes):.0f} ms"
            f" (min {min(probes):.0f}, max {max(probes):.0f})"
        )


if __name__ == "__main__":
    main()
