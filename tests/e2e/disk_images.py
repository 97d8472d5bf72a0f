"""Small whole-disk images that boot to a marker line, made at test time.

Each holds a Linux kernel and a tiny initramfs whose ``/init`` (busybox-static) prints
one unique line on the serial console and powers the machine off, so a test sees that
the disk booted (the line) and when it was done (QEMU exits with ``-no-reboot``).
The UEFI image has no fallback loader (``EFI/BOOT/BOOTX64.EFI``): only a boot entry in
the firmware's NVRAM can start it. Built with dosfstools, mtools, sfdisk, objcopy,
syslinux and systemd's EFI stub; no loop devices or mounts.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from conductor import cpio

BUSYBOX = Path("/bin/busybox")  # busybox-static: no libraries to copy
EFI_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")  # systemd-boot-efi
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")  # syslinux-common
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MIB = 1024 * 1024
PARTITION_START = MIB
# The UEFI loader's place on the ESP: a vendor directory, as an installed OS has it.
UEFI_VENDOR = "tacet-marker"
UEFI_LOADER = f"EFI/{UEFI_VENDOR}/marker.efi"
UEFI_LOADER_PATH = "\\" + UEFI_LOADER.replace("/", "\\")  # as a UEFI device path names it
KERNEL_ARGS = "console=ttyS0,115200 panic=1"
TOOLS = {
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "sfdisk": "fdisk",
    "objcopy": "binutils",
    "syslinux": "syslinux",
}


class ImageToolMissing(AssertionError):
    """A tool the image needs is not installed; tools/setup-e2e installs them."""


@dataclass(frozen=True)
class BootImage:
    path: Path
    sha256: str
    marker: str  # the exact line /init prints


def require_image_tools() -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    missing += [str(p) for p in (BUSYBOX, EFI_STUB, SYSLINUX_MBR) if not p.is_file()]
    if missing:
        raise ImageToolMissing(
            "the boot test images need " + ", ".join(missing) + ": run tools/setup-e2e"
        )


def new_marker() -> str:
    return f"tacet-e2e: booted from disk {os.urandom(8).hex()}"


def init_script(marker: str) -> str:
    """/init: the marker on the serial port, then an immediate power-off."""
    return (
        "#!/bin/busybox sh\n"
        "/bin/busybox mount -t devtmpfs devtmpfs /dev\n"
        "exec >/dev/console 2>&1\n"
        f"/bin/busybox echo '{marker}'\n"
        "/bin/busybox poweroff -f\n"
    )


def marker_initramfs(marker: str) -> bytes:
    """A gzip'd newc archive with busybox and /init (the kernel's own one adds /dev/console)."""
    entries = [
        cpio.directory("bin"),
        cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755),
        cpio.directory("dev"),
        cpio.file("init", init_script(marker).encode(), 0o755),
    ]
    return gzip.compress(cpio.pack(entries), mtime=0)


def pe_image_end(data: bytes) -> int:
    """The highest virtual address any section of a PE image uses (pure)."""
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe : pe + 4] != b"PE\0\0":
        raise ValueError("not a PE image")
    sections, optional_size = struct.unpack_from("<H12xH", data, pe + 6)
    table = pe + 24 + optional_size
    end = 0
    for i in range(sections):
        virtual_size, virtual_address = struct.unpack_from("<II", data, table + 40 * i + 8)
        end = max(end, virtual_address + virtual_size)
    return end


def _align(value: int, to: int) -> int:
    return -(-value // to) * to


def unified_kernel_image(kernel: Path, initrd: bytes, workdir: Path) -> Path:
    """systemd's EFI stub with the kernel, initrd and command line as PE sections.

    The stub finds the sections by name; they are placed after the stub's own, each on
    a 64 KiB boundary (the stub's image base is 0).
    """
    stub = EFI_STUB.read_bytes()
    cmdline, initrd_path = workdir / "cmdline", workdir / "uki-initrd"
    cmdline.write_bytes(KERNEL_ARGS.encode() + b"\0")
    initrd_path.write_bytes(initrd)
    sections, address = [], _align(pe_image_end(stub), 0x10000)
    for name, path in ((".cmdline", cmdline), (".linux", kernel), (".initrd", initrd_path)):
        sections += [
            "--add-section",
            f"{name}={path}",
            "--change-section-vma",
            f"{name}={address:#x}",
        ]
        address = _align(address + path.stat().st_size, 0x10000)
    out = workdir / "marker.efi"
    subprocess.run(["objcopy", *sections, str(EFI_STUB), str(out)], check=True)
    return out


def _mtools(*command: str) -> None:
    subprocess.run(command, check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


def fat_filesystem(path: Path, size_mib: int, fat_bits: int, files: dict[str, Path]) -> None:
    """A FAT file system in ``path`` holding ``files`` (name on the FS -> host file).

    ``-h``: the sectors before the partition, which a boot sector relies on."""
    path.unlink(missing_ok=True)
    subprocess.run(
        [
            "mkfs.vfat",
            "-F",
            str(fat_bits),
            "-S",
            "512",
            "-s",
            "1",
            "-h",
            str(PARTITION_START // 512),
            "-n",
            "TACETBOOT",
            "-C",
            str(path),
            str(size_mib * 1024),
        ],
        check=True,
        capture_output=True,
    )
    made: set[str] = set()
    for name in files:
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            directory = "/".join(parts[:depth])
            if directory not in made:
                _mtools("mmd", "-i", str(path), f"::/{directory}")
                made.add(directory)
    for name, source in files.items():
        _mtools("mcopy", "-i", str(path), str(source), f"::/{name}")


def whole_disk(out: Path, filesystem: Path, table: str) -> None:
    """``filesystem`` as the one partition at 1 MiB of a disk image with ``table``
    (an sfdisk script for that partition), 1 MiB spare at the end (GPT's backup)."""
    size = PARTITION_START + filesystem.stat().st_size + MIB
    out.unlink(missing_ok=True)
    with out.open("wb") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", "-q", str(out)], input=table, text=True, check=True)
    with out.open("r+b") as dst, filesystem.open("rb") as src:
        dst.seek(PARTITION_START)
        shutil.copyfileobj(src, dst, MIB)
    filesystem.unlink()


def _finish(path: Path, marker: str) -> BootImage:
    return BootImage(path, hashlib.sha256(path.read_bytes()).hexdigest(), marker)


def uefi_image(kernel: Path, workdir: Path) -> BootImage:
    """GPT with one ESP (FAT32) holding a unified kernel image at UEFI_LOADER only (no
    EFI/BOOT/BOOTX64.EFI, which firmware would find without a boot entry)."""
    require_image_tools()
    workdir.mkdir(parents=True, exist_ok=True)
    marker = new_marker()
    loader = unified_kernel_image(kernel, marker_initramfs(marker), workdir)
    esp = workdir / "esp.fat"
    fat_filesystem(esp, 40, 32, {UEFI_LOADER: loader})
    sectors = esp.stat().st_size // 512
    table = (
        f"label: gpt\nstart={PARTITION_START // 512}, size={sectors}, type={ESP_TYPE},"
        ' name="EFI System"\n'
    )
    image = workdir / "uefi-disk.raw"
    whole_disk(image, esp, table)
    loader.unlink()
    return _finish(image, marker)


def syslinux_config() -> str:
    return (
        "SERIAL 0 115200\n"
        "DEFAULT marker\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "LABEL marker\n"
        "  LINUX /vmlinuz\n"
        "  INITRD /initrd.img\n"
        f"  APPEND {KERNEL_ARGS}\n"
    )


def bios_image(kernel: Path, workdir: Path) -> BootImage:
    """MBR (syslinux's boot code) with one active FAT16 partition: SYSLINUX, the kernel
    and the marker initramfs."""
    require_image_tools()
    workdir.mkdir(parents=True, exist_ok=True)
    marker = new_marker()
    initrd, config = workdir / "initrd.img", workdir / "syslinux.cfg"
    initrd.write_bytes(marker_initramfs(marker))
    config.write_text(syslinux_config())
    fs = workdir / "boot.fat"
    fat_filesystem(fs, 32, 16, {"vmlinuz": kernel, "initrd.img": initrd, "syslinux.cfg": config})
    subprocess.run(["syslinux", "--install", str(fs)], check=True)
    sectors = fs.stat().st_size // 512
    image = workdir / "bios-disk.raw"
    whole_disk(
        image, fs, f"label: dos\nstart={PARTITION_START // 512}, size={sectors}, type=6, bootable\n"
    )
    with image.open("r+b") as f:  # the boot code only: the partition table stays
        f.write(SYSLINUX_MBR.read_bytes()[:440])
    initrd.unlink()
    config.unlink()
    return _finish(image, marker)
