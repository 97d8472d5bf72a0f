"""PCI devices as IPA's ``pci-devices`` inspection collector lists them.

ironic's ``pci-devices`` hook counts them by (vendor, product) into node capabilities and
its ``accelerators`` hook matches them against known accelerator cards. Not part of the
inventory: only inspection with that collector asks for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .sysfs import list_dir, read_stripped


def hex_id(text: str | None) -> str | None:
    """``0x8086`` as IPA reports it: ``8086`` (the part after the ``x``); None if not hex."""
    if not text or not text.lower().startswith("0x"):
        return None
    digits = text[2:].lower()
    return digits if digits and all(c in "0123456789abcdef" for c in digits) else None


def pci_devices(sysfs: Path) -> list[dict[str, Any]]:
    """Every function under ``bus/pci/devices`` with readable vendor, device and class
    ids (others are skipped, as IPA skips them); revision and NUMA node when known."""
    root = sysfs / "bus" / "pci" / "devices"
    found = []
    for address in list_dir(root):
        device = root / address
        vendor, product, kind = (
            hex_id(read_stripped(device / name)) for name in ("vendor", "device", "class")
        )
        if vendor is None or product is None or kind is None:
            continue
        found.append(
            {
                "vendor_id": vendor,
                "product_id": product,
                "class": kind,
                "revision": hex_id(read_stripped(device / "revision")),
                "bus": address,
                "numa_node_id": read_stripped(device / "numa_node"),
            }
        )
    return found
