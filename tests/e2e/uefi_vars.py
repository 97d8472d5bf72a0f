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


# --- writing, for a test that needs an entry the agent did not make ---------------------

VAR_DELETED_STATE = 0x3C  # VAR_ADDED with the in-deleted-transition and deleted bits cleared
NV_BS_RT = 0x7  # non-volatile, boot service and runtime access


def hard_drive_file_path(
    partition: int, start_lba: int, sectors: int, partition_guid: uuid.UUID, file_path: str
) -> bytes:
    """A short-form device path, HD(partition,GPT,guid,start,size)/File(path), the form
    efibootmgr writes: the firmware finds the partition by its GUID on any disk."""
    hard_drive = struct.pack(
        "<BBHIQQ16sBB", 4, 1, 42, partition, start_lba, sectors, partition_guid.bytes_le, 2, 2
    )
    name = (file_path + "\0").encode("utf-16-le")
    return hard_drive + struct.pack("<BBH", 4, 4, 4 + len(name)) + name + b"\x7f\xff\x04\x00"


def _variable(name: str, data: bytes) -> bytes:
    encoded = (name + "\0").encode("utf-16-le")
    header = VARIABLE_HEADER.pack(
        START_ID, VAR_ADDED, NV_BS_RT, 0, bytes(16), 0, len(encoded), len(data),
        GLOBAL_VARIABLE.bytes_le,
    )  # fmt: skip
    body = header + encoded + data
    return body + b"\xff" * (-len(body) % 4)


def with_boot_entry(store: bytes, number: int, description: str, device_path: bytes) -> bytes:
    """The store with Boot#### added and put first in BootOrder, as EDK II itself writes
    an update: the old BootOrder marked deleted, the new variables after the last one."""
    if store[40:44] != b"_FVH":
        raise VarStoreError("no firmware volume header")
    out = bytearray(store)
    pos = struct.unpack_from("<H", store, 48)[0] + STORE_HEADER_SIZE
    order: list[int] = []
    while pos + VARIABLE_HEADER.size <= len(store):
        start, state, _a, _c, _t, _k, name_size, data_size, guid = VARIABLE_HEADER.unpack_from(
            store, pos
        )
        if start != START_ID:
            break
        name_at = pos + VARIABLE_HEADER.size
        name = store[name_at : name_at + name_size].decode("utf-16-le").rstrip("\0")
        if (
            state == VAR_ADDED
            and name == "BootOrder"
            and uuid.UUID(bytes_le=guid) == (GLOBAL_VARIABLE)
        ):
            data = store[name_at + name_size : name_at + name_size + data_size]
            order = list(struct.unpack(f"<{data_size // 2}H", data))
            out[pos + 2] = VAR_DELETED_STATE
        pos = -(-(name_at + name_size + data_size) // 4) * 4
    option = (
        struct.pack("<IH", 1, len(device_path))  # LOAD_OPTION_ACTIVE
        + (description + "\0").encode("utf-16-le")
        + device_path
    )
    new_order = [number, *(n for n in order if n != number)]
    added = _variable(f"Boot{number:04X}", option) + _variable(
        "BootOrder", struct.pack(f"<{len(new_order)}H", *new_order)
    )
    if any(b != 0xFF for b in store[pos : pos + len(added)]) or pos + len(added) > len(store):
        raise VarStoreError("no free space after the last variable")
    out[pos : pos + len(added)] = added
    return bytes(out)
