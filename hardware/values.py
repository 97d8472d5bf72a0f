"""One place that decides which firmware-provided strings are real values.

Vendors ship SMBIOS tables full of placeholders. Reporting "To Be Filled By O.E.M."
as a serial number would let two different machines look identical to a conductor,
so every DMI string goes through :func:`clean_firmware_string`.
"""

from __future__ import annotations

import re

_PLACEHOLDERS = frozenset(
    text.casefold()
    for text in (
        "To Be Filled By O.E.M.",
        "To Be Filled By O.E.M",
        "Default string",
        "Default String",
        "Not Specified",
        "Not Applicable",
        "Not Available",
        "Not Present",
        "N/A",
        "NA",
        "None",
        "Null",
        "Unknown",
        "Undefined",
        "OEM",
        "O.E.M.",
        "System Serial Number",
        "System Product Name",
        "System manufacturer",
        "System Manufacturer",
        "System Version",
        "Chassis Serial Number",
        "Base Board Serial Number",
        "Type1ProductConfigId",
        "SKU",
        "0",
        "0123456789",
        "123456789",
        "1234567890",
        "01234567890",
        "XXXXXXXXXXXX",
        "xxxxxxxxxxxx",
        "Serial",
        "$SERIAL$",
        "Invalid",
        # A UUID some boards ship in every unit (DMTF example value).
        "03000200-0400-0500-0006-000700080009",
    )
)

# All-0xff / all-zero fillers, as bytes decoded to text or as UUID/hex notation.
_FILLER = re.compile(r"^(?:[\s\-]*(?:ff|\xff)[\s\-]*)+$|^[\s0\-]+$", re.IGNORECASE)
_REPEATED_CHAR = re.compile(r"^(.)\1{3,}$")


def clean_firmware_string(value: str | None) -> str | None:
    """The value with whitespace trimmed, or None when it is a known placeholder."""
    if value is None:
        return None
    text = value.replace("\x00", "").strip()
    if not text:
        return None
    if text.casefold() in _PLACEHOLDERS:
        return None
    if _FILLER.match(text):
        return None
    if _REPEATED_CHAR.match(text) and text[0] in "0fFxX.* -_":
        return None
    if not text.isprintable():
        return None
    return text
