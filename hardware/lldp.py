"""Raw LLDP capture: the TLVs a switch announces on each NIC, in IPA's ``lldp`` shape.

Switches send LLDP every 30 s or so, so capture costs time and only runs when the
caller asks for it (``collect_inventory(lldp_timeout=...)``). The result per interface
is a list of ``[tlv_type, value_as_hex]`` pairs, like ironic-python-agent reports.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import time
from collections.abc import Iterable

LOG = logging.getLogger(__name__)

ETH_P_LLDP = 0x88CC
LLDP_MULTICAST = bytes.fromhex("0180c200000e")
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_MULTICAST = 0
ETH_HEADER = 14
MAX_FRAME = 9216

Tlvs = list[list[int | str]]


def parse_lldp_frame(frame: bytes) -> Tlvs | None:
    """TLVs of an Ethernet frame carrying LLDP; None if it is not a well-formed LLDPDU."""
    if len(frame) < ETH_HEADER + 2:
        return None
    offset = 12
    ethertype = struct.unpack_from("!H", frame, offset)[0]
    while ethertype == 0x8100 and len(frame) >= offset + 6:  # 802.1Q tag(s)
        offset += 4
        ethertype = struct.unpack_from("!H", frame, offset)[0]
    if ethertype != ETH_P_LLDP:
        return None
    offset += 2
    tlvs: Tlvs = []
    while offset + 2 <= len(frame):
        header = struct.unpack_from("!H", frame, offset)[0]
        kind, length = header >> 9, header & 0x1FF
        offset += 2
        if offset + length > len(frame):
            return None  # truncated TLV: do not report half a neighbour
        if kind == 0:  # End of LLDPDU
            break
        tlvs.append([kind, frame[offset : offset + length].hex()])
        offset += length
    return tlvs or None


def _open(name: str) -> socket.socket | None:
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_LLDP))
        sock.bind((name, ETH_P_LLDP))
        index = socket.if_nametoindex(name)
        request = struct.pack("iHH8s", index, PACKET_MR_MULTICAST, 6, LLDP_MULTICAST)
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, request)
        sock.setblocking(False)
    except OSError as exc:
        LOG.warning("lldp: cannot listen on %s: %s", name, exc)
        return None
    return sock


def capture_lldp(names: Iterable[str], timeout: float) -> dict[str, Tlvs]:
    """First LLDPDU heard on each interface within ``timeout`` seconds (absent if none)."""
    sockets = {}
    for name in names:
        sock = _open(name)
        if sock is not None:
            sockets[sock] = name
    found: dict[str, Tlvs] = {}
    deadline = time.monotonic() + timeout
    try:
        while sockets and (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(list(sockets), [], [], remaining)
            for sock in readable:
                try:
                    frame = sock.recv(MAX_FRAME)
                except OSError:
                    continue
                tlvs = parse_lldp_frame(frame)
                if tlvs:
                    found[sockets.pop(sock)] = tlvs
                    sock.close()
    finally:
        for sock in sockets:
            sock.close()
    return found
