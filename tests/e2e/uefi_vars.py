"""The boot entries in an OVMF variable store file (the guest's NVRAM), read on the host.

EDK II keeps the variables in a firmware volume: its header, then a variable store
header, then one authenticated variable header per variable (name in UTF-16, data),
each on a 4-byte boundary; a variable rewritten or deleted stays in place with its
state changed, so only those in the ADDED state count. Layouts from EDK II's
``PiFirmwareVolume.h`` and ``VariableFormat.h``, and the UEFI specification's
EFI_LOAD_OPTION and device path nodes. Pure functions over bytes.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
VARIABLE_HEADER = struct.Struct("<HBxIQ16sIII16s")  # AUTHENTICATED_VARIABLE_HEADER
START_ID = 0x55AA
VAR_ADDED = 0x3F
STORE_HEADER_SIZE = 28  # GUID, size, format, state, reserved


class VarStoreError(ValueError):
    """The file is not an EDK II variable store."""


@dataclass(frozen=True)
class LoadOption:
    number: int
    description: str
    device_path: bytes
    optional_data: bytes

    @property
    def file_path(self) -> str | None:
        """The media file path node of the device path (``\\EFI\\...``), if it has one."""
        return file_path_of(self.device_path)


def variables(store: bytes) -> dict[tuple[uuid.UUID, str], bytes]:
    """Every live variable: (vendor GUID, name) -> data."""
    if store[40:44] != b"_FVH":
        raise VarStoreError("no firmware volume header")
    header_length = struct.unpack_from("<H", store, 48)[0]
    pos = header_length + STORE_HEADER_SIZE
    found: dict[tuple[uuid.UUID, str], bytes] = {}
    while pos + VARIABLE_HEADER.size <= len(store):
        start, state, _attrs, _count, _time, _key, name_size, data_size, guid = (
            VARIABLE_HEADER.unpack_from(store, pos)
        )
        if start != START_ID:
            break
        name_at = pos + VARIABLE_HEADER.size
        data_at = name_at + name_size
        if state == VAR_ADDED:
            name = store[name_at:data_at].decode("utf-16-le").rstrip("\0")
            found[(uuid.UUID(bytes_le=guid), name)] = store[data_at : data_at + data_size]
        pos = -(-(data_at + data_size) // 4) * 4
    return found


def parse_load_option(number: int, data: bytes) -> LoadOption:
    """EFI_LOAD_OPTION: attributes, device path length, description, device path, data."""
    path_length = struct.unpack_from("<H", data, 4)[0]
    end = 6
    while data[end : end + 2] != b"\0\0":
        end += 2
    description = data[6:end].decode("utf-16-le")
    path_at = end + 2
    return LoadOption(
        number,
        description,
        data[path_at : path_at + path_length],
        data[path_at + path_length :],
    )


def file_path_of(device_path: bytes) -> str | None:
    pos = 0
    while pos + 4 <= len(device_path):
        node_type, subtype, length = struct.unpack_from("<BBH", device_path, pos)
        if node_type == 0x7F or length < 4:
            return None
        if node_type == 4 and subtype == 4:  # media device path: file path
            return device_path[pos + 4 : pos + length].decode("utf-16-le").rstrip("\0")
        pos += length
    return None


@dataclass(frozen=True)
class BootEntries:
    options: dict[int, LoadOption]
    order: list[int]


def boot_entries(store: bytes) -> BootEntries:
    """The Boot#### options and BootOrder of the EFI global variable namespace."""
    options: dict[int, LoadOption] = {}
    order: list[int] = []
    for (guid, name), data in variables(store).items():
        if guid != GLOBAL_VARIABLE:
            continue
        if name == "BootOrder":
            order = list(struct.unpack(f"<{len(data) // 2}H", data))
        elif len(name) == 8 and name.startswith("Boot"):
            try:
                number = int(name[4:], 16)
            except ValueError:
                continue
            options[number] = parse_load_option(number, data)
    return BootEntries(options, order)
