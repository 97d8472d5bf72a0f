"""A UEFI whole-disk test image: GPT, an EFI system partition with boot loaders, a root.

The loaders are placeholders (nobody boots them): what matters to ironic and the agent
is where they are. ``EFI/debian`` holds ``shimx64.efi`` and ``grubx64.efi`` as a
distribution installs them, and ``EFI/BOOT/BOOTX64.EFI`` is the removable-media
fallback; the agent's rule picks the vendor's shim.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LOADERS = ("EFI/debian/shimx64.efi", "EFI/debian/grubx64.efi", "EFI/BOOT/BOOTX64.EFI")
EXPECTED_LOADER = "EFI/debian/shimx64.efi"


@dataclass(frozen=True)
class UefiImage:
    path: Path
    sha256: str
    esp: tuple[int, int]  # byte offset, length
    root: tuple[int, int]


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def build_uefi_image(workdir: Path, size_mib: int = 32) -> UefiImage:
    esp_start, esp_mib = 1 * MIB, 8
    root_start = esp_start + esp_mib * MIB
    root_bytes = size_mib * MIB - root_start - MIB  # the backup GPT needs the last sectors
    esp = workdir / "esp.vfat"
    esp.unlink(missing_ok=True)
    run("mkfs.vfat", "-C", "-n", "ESP", str(esp), str(esp_mib * 1024))
    for directory in ("::/EFI", "::/EFI/debian", "::/EFI/BOOT"):
        run("mmd", "-i", str(esp), directory)
    for loader in LOADERS:
        placeholder = workdir / Path(loader).name
        placeholder.write_bytes(b"MZ placeholder for " + loader.encode() + b"\n")
        run("mcopy", "-i", str(esp), str(placeholder), f"::/{loader}")
    root = workdir / "root.ext4"
    root.unlink(missing_ok=True)
    run("mkfs.ext4", "-q", "-F", "-L", "uefi-root", str(root), f"{root_bytes // 1024}k")
    image = workdir / "uefi.raw"
    with image.open("wb") as f:
        f.truncate(size_mib * MIB)
    run(
        "sgdisk",
        f"--new=1:{esp_start // 512}:+{esp_mib}M",
        f"--typecode=1:{ESP_TYPE}",
        "--change-name=1:EFI system partition",
        f"--new=2:{root_start // 512}:+{root_bytes // 1024}K",
        "--typecode=2:8300",
        str(image),
    )
    with image.open("r+b") as out:
        for part, offset in ((esp, esp_start), (root, root_start)):
            out.seek(offset)
            out.write(part.read_bytes())
            part.unlink()
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    return UefiImage(image, digest, (esp_start, esp_mib * MIB), (root_start, root_bytes))


# --- what the agent wrote to its efivars directory (efivarfs layout) ----------------------
GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"


@dataclass(frozen=True)
class LoadOption:
    number: int
    description: str
    file_paths: tuple[str, ...]  # the File() nodes of the device path


def parse_load_option(number: int, data: bytes) -> LoadOption:
    """An efivarfs ``Boot####`` file: 4 bytes of variable attributes, then the UEFI
    spec's EFI_LOAD_OPTION (attributes, device path length, description, device path)."""
    body = data[4:]
    path_length = int.from_bytes(body[4:6], "little")
    end = 6
    while body[end : end + 2] != b"\0\0":
        end += 2
    description = body[6:end].decode("utf-16-le")
    path = body[end + 2 : end + 2 + path_length]
    files, offset = [], 0
    while offset + 4 <= len(path):
        kind, subtype = path[offset], path[offset + 1]
        length = int.from_bytes(path[offset + 2 : offset + 4], "little")
        if length < 4:
            break
        if (kind, subtype) == (4, 4):  # media device path, file path
            files.append(path[offset + 4 : offset + length].decode("utf-16-le").rstrip("\0"))
        offset += length
    return LoadOption(number, description, tuple(files))


def boot_entries(efivars: Path) -> tuple[list[LoadOption], list[int]]:
    """The ``Boot####`` entries in an efivars directory, and ``BootOrder``."""
    entries = []
    for path in sorted(efivars.glob(f"Boot[0-9A-F][0-9A-F][0-9A-F][0-9A-F]-{GLOBAL_VARIABLE}")):
        entries.append(parse_load_option(int(path.name[4:8], 16), path.read_bytes()))
    order_file = efivars / f"BootOrder-{GLOBAL_VARIABLE}"
    raw = order_file.read_bytes()[4:] if order_file.exists() else b""
    order = [int.from_bytes(raw[i : i + 2], "little") for i in range(0, len(raw) - 1, 2)]
    return entries, order
