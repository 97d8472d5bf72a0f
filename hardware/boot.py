"""Boot mode and the PXE interface named by ``BOOTIF``."""

from __future__ import annotations

import re
from pathlib import Path

from .model import Boot

_MAC = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")


def parse_bootif(cmdline: str) -> str | None:
    """MAC of ``BOOTIF=`` in either pxelinux (``01-aa-bb-..``) or plain form, else None."""
    value = None
    for token in cmdline.split():
        key, sep, rest = token.partition("=")
        if sep and key == "BOOTIF":
            value = rest  # the last one wins, as the kernel's own parsing does
    if not value:
        return None
    text = value.strip().strip('"').lower().replace("-", ":")
    parts = text.split(":")
    if len(parts) == 7 and parts[0] == "01":  # pxelinux prefixes ARP type 1 (Ethernet)
        parts = parts[1:]
    mac = ":".join(parts)
    return mac if _MAC.match(mac) else None


def boot_mode(sysfs: Path) -> str:
    return "uefi" if (sysfs / "firmware" / "efi").is_dir() else "bios"


class BootCollector:
    def __init__(self, sysfs: Path, cmdline: str) -> None:
        self.sysfs = sysfs
        self.cmdline = cmdline

    def collect(self) -> Boot:
        return Boot(
            current_boot_mode=boot_mode(self.sysfs), pxe_interface=parse_bootif(self.cmdline)
        )
