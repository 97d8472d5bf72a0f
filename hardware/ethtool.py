"""The two ethtool ioctls the inventory needs: permanent MAC and driver name.

Standard library only, because ``record-fixture`` uses it inside minimal guests.
"""

from __future__ import annotations

import array
import fcntl
import socket
import struct

SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003
ETHTOOL_GPERMADDR = 0x00000020
MAX_ADDR_LEN = 32
IFNAMSIZ = 16


def _ioctl(name: str, payload: array.array[int]) -> bool:
    address, _length = payload.buffer_info()
    request = struct.pack(f"{IFNAMSIZ}sP", name.encode()[: IFNAMSIZ - 1], address)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)
    except OSError:
        return False
    return True


def permanent_mac(name: str) -> str | None:
    """The burned-in address (``ethtool -P``); None when the driver has none (all zero)."""
    payload = array.array("B", struct.pack("II", ETHTOOL_GPERMADDR, MAX_ADDR_LEN))
    payload.extend(bytes(MAX_ADDR_LEN))
    if not _ioctl(name, payload):
        return None
    data = payload.tobytes()
    (size,) = struct.unpack_from("I", data, 4)
    mac = data[8 : 8 + min(size, MAX_ADDR_LEN)]
    if not mac or not any(mac):
        return None
    return ":".join(f"{byte:02x}" for byte in mac)


def driver_name(name: str) -> str | None:
    """Driver reported by ``ethtool -i`` (works for bonds and VLANs, which have no device link)."""
    # struct ethtool_drvinfo: cmd, driver[32], version[32], fw_version[32], bus_info[32], ...
    payload = array.array("B", struct.pack("I", ETHTOOL_GDRVINFO))
    payload.extend(bytes(196 - 4))
    if not _ioctl(name, payload):
        return None
    driver = payload.tobytes()[4:36].split(b"\0", 1)[0].decode("ascii", "replace")
    return driver or None
