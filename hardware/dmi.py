"""System identity and firmware from ``/sys/class/dmi/id``."""

from __future__ import annotations

from pathlib import Path

from .model import Firmware, SystemVendor
from .sysfs import read_text
from .values import clean_firmware_string


def parse_system_vendor(fields: dict[str, str | None]) -> SystemVendor:
    """Build the IPA ``system_vendor`` block from raw DMI id file contents."""

    def get(name: str) -> str | None:
        return clean_firmware_string(fields.get(name))

    uuid = get("product_uuid")
    return SystemVendor(
        product_name=get("product_name"),
        serial_number=get("product_serial"),
        manufacturer=get("sys_vendor"),
        uuid=uuid.lower() if uuid else None,
        firmware=Firmware(
            vendor=get("bios_vendor"),
            version=get("bios_version"),
            build_date=get("bios_date"),
        ),
    )


DMI_FIELDS = (
    "sys_vendor",
    "product_name",
    "product_serial",
    "product_uuid",
    "bios_vendor",
    "bios_version",
    "bios_date",
)


class SystemCollector:
    def __init__(self, sysfs: Path) -> None:
        self.dmi_dir = sysfs / "class" / "dmi" / "id"

    def collect(self) -> SystemVendor:
        return parse_system_vendor({name: read_text(self.dmi_dir / name) for name in DMI_FIELDS})
