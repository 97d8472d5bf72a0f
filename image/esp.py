"""Which boot loaders on an EFI system partition get a UEFI boot entry, and reading the ESP.

The rule (:func:`find_loaders`, pure) is the one shim's own fallback loader and the
distributions' installers follow, so an operator gets the entries the OS would have
made itself. With ``<ARCH>`` the machine's UEFI architecture suffix (``x64`` on
x86_64, ``aa64`` on arm64), each vendor directory ``EFI/<vendor>/`` other than
``EFI/BOOT``, in name order, gives:

1. ``BOOT<ARCH>.CSV`` (shim's list, UTF-16): one entry per line ``loader,label,...``
   whose loader is in that directory, with that label (the options column is not used);
2. else ``shim<ARCH>.efi``; 3. else ``grub<ARCH>.efi``;
4. else its only ``.efi`` file (shim's helpers ``mm<ARCH>.efi``, ``fb<ARCH>.efi``
   not counted); a directory with several and none of the above gives nothing.

Entries 2-4 are labelled with the vendor directory's name. Only when no vendor
directory gives a loader: the removable-media path ``EFI/BOOT/BOOT<ARCH>.EFI``,
labelled ``UEFI OS``. Names compare case-insensitively, as FAT does.

The ESP is read with mtools (``mdir``, ``mtype``) at the partition's byte offset on
the disk: nothing is mounted, so neither the vfat kernel module nor a partition
device node is needed, and the disk is only read.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import BadInput, ImageError

FALLBACK_LABEL = "UEFI OS"
MTOOLS_TIMEOUT = 60.0
MAX_CSV_BYTES = 64 * 1024

# platform.machine() -> the suffix of UEFI's default file names (UEFI 2.10, 3.5.1.1)
ARCH_SUFFIXES = {
    "x86_64": "x64",
    "amd64": "x64",
    "aarch64": "aa64",
    "arm64": "aa64",
    "i386": "ia32",
    "i686": "ia32",
    "armv7l": "arm",
    "riscv64": "riscv64",
    "loongarch64": "loongarch64",
}


@dataclass(frozen=True)
class Loader:
    path: str  # on the ESP, with forward slashes: "EFI/debian/shimx64.efi"
    label: str

    @property
    def efi_path(self) -> str:
        """The path as a UEFI file-path node carries it: ``\\EFI\\debian\\shimx64.efi``."""
        return "\\" + self.path.replace("/", "\\")


def machine_arch() -> str:
    machine = platform.machine().lower()
    try:
        return ARCH_SUFFIXES[machine]
    except KeyError:
        raise ImageError(f"no UEFI file names are known for this machine ({machine})") from None


def parse_boot_csv(data: bytes) -> list[tuple[str, str]]:
    """``(loader, label)`` of each line of a shim ``BOOT<ARCH>.CSV``: UTF-16 (a BOM or
    little-endian without one), ``loader,label,options,description``."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        text = data.decode("utf-16", errors="replace")
    else:
        text = data.decode("utf-16-le", errors="replace")
    lines = []
    for line in text.replace("\r", "\n").split("\n"):
        fields = [field.strip() for field in line.split(",")]
        if len(fields) >= 2 and fields[0] and fields[1]:
            lines.append((fields[0], fields[1]))
    return lines


def find_loaders(files: Iterable[str], read: Callable[[str], bytes], arch: str) -> list[Loader]:
    """The loaders to make entries for, by the rule above. ``files`` are the ESP's file
    paths (``EFI/debian/shimx64.efi``); ``read`` returns a file's bytes (for the CSV)."""
    by_dir: dict[str, dict[str, str]] = {}  # lower-case vendor dir -> lower name -> path
    dir_names: dict[str, str] = {}
    for path in files:
        parts = path.strip("/").split("/")
        if len(parts) != 3 or parts[0].lower() != "efi":
            continue
        vendor, name = parts[1], parts[2]
        by_dir.setdefault(vendor.lower(), {})[name.lower()] = path.strip("/")
        dir_names.setdefault(vendor.lower(), vendor)
    loaders: list[Loader] = []
    for key in sorted(by_dir):
        if key == "boot":
            continue
        loaders += _vendor_loaders(dir_names[key], by_dir[key], read, arch)
    if loaders:
        return loaders
    fallback = by_dir.get("boot", {}).get(f"boot{arch}.efi")
    return [Loader(fallback, FALLBACK_LABEL)] if fallback else []


def _vendor_loaders(
    vendor: str, names: dict[str, str], read: Callable[[str], bytes], arch: str
) -> list[Loader]:
    csv = names.get(f"boot{arch}.csv")
    if csv is not None:
        found = [
            Loader(names[loader.lower()], label)
            for loader, label in parse_boot_csv(read(csv))
            if loader.lower() in names and loader.lower().endswith(".efi")
        ]
        if found:
            return found
    for preferred in (f"shim{arch}.efi", f"grub{arch}.efi"):
        if preferred in names:
            return [Loader(names[preferred], vendor)]
    helpers = {f"mm{arch}.efi", f"fb{arch}.efi"}
    programs = [n for n in names if n.endswith(".efi") and n not in helpers]
    if len(programs) == 1:
        return [Loader(names[programs[0]], vendor)]
    return []


# -- reading the ESP with mtools -------------------------------------------------------
def _mtools(command: list[str]) -> bytes:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C.UTF-8")
    try:
        done = subprocess.run(
            command, capture_output=True, timeout=MTOOLS_TIMEOUT, check=False, env=env
        )
    except FileNotFoundError:
        raise ImageError(f"{command[0]} (mtools) is not installed") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"{command[0]} took more than {MTOOLS_TIMEOUT:g}s") from None
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise BadInput(
            "cannot read the EFI system partition as FAT: "
            + (reason[-1] if reason else f"{command[0]} exit status {done.returncode}")
        )
    return done.stdout


class FatReader:
    """The FAT file system at ``offset`` bytes into ``disk`` (a device or image file)."""

    def __init__(self, disk: str, offset: int) -> None:
        self.image = f"{disk}@@{offset}"

    def files(self) -> list[str]:
        """Every file's path (directories left out), without a leading slash."""
        out = _mtools(["mdir", "-/", "-b", "-i", self.image, "::/"])
        paths = []
        for line in out.decode("utf-8", errors="replace").splitlines():
            if line.startswith("::/") and not line.endswith("/"):
                paths.append(line[3:])
        return paths

    def read(self, path: str) -> bytes:
        data = _mtools(["mtype", "-i", self.image, "::/" + path])
        if len(data) > MAX_CSV_BYTES:
            raise BadInput(f"{path} on the EFI system partition is larger than expected")
        return data
