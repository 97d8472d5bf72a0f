"""The LACP partner a Linux 802.3ad bond needs to aggregate its ports.

A bond in 802.3ad mode without an LACP partner still passes traffic, but over one port
only (an "individual" aggregator, partner MAC 00:00:00:00:00:00): that proves nothing
about aggregation. To put a port into collecting/distributing, Linux wants the partner's
LACPDU to *match* it (the partner fields name the port's own actor system, key, port and
priority, or the partner is individual) and to carry the synchronisation bit. So the
smallest useful partner answers every LACPDU at once with one that mirrors the guest's
actor information as its partner information and says "in sync, collecting,
distributing" about itself. Linux sends LACPDUs itself (``lacp_active`` is on by
default) every 30 s, or every second with ``lacp_rate=fast``; each answer refreshes its
timer, so the partner never needs a clock of its own.

The layout is IEEE 802.1AX's LACPDU, version 1 (110 bytes after the Ethernet header):
subtype, version, then the actor, partner and collector TLVs, the terminator and padding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

SLOW_PROTOCOLS = 0x8809
SLOW_PROTOCOLS_GROUP = bytes.fromhex("0180c2000002")
SUBTYPE_LACP = 1
SUBTYPE_MARKER = 2

# actor/partner state bits
ACTIVITY = 0x01
SHORT_TIMEOUT = 0x02
AGGREGATION = 0x04
SYNCHRONIZATION = 0x08
COLLECTING = 0x10
DISTRIBUTING = 0x20
DEFAULTED = 0x40
EXPIRED = 0x80

# one actor or partner TLV: type, length (20), system priority, system, key, port
# priority, port, state, 3 reserved
_INFO = struct.Struct("!BBH6sHHHB3x")
_COLLECTOR = struct.Struct("!BBH12x")  # type 3, length 16, max delay
_TERMINATOR = struct.Struct("!BB50x")  # type 0, length 0, then padding
LACPDU_LENGTH = 2 + 2 * _INFO.size + _COLLECTOR.size + _TERMINATOR.size  # 110


class NotLacp(ValueError):
    """Not a version-1 LACPDU (a marker PDU, a short or malformed frame)."""


@dataclass(frozen=True)
class PortInfo:
    """One side's view of one port: who it is and what state it is in."""

    system: bytes  # six bytes, a MAC address
    key: int
    port: int
    state: int
    system_priority: int = 0x8000
    port_priority: int = 0x80

    def pack(self, tlv_type: int) -> bytes:
        return _INFO.pack(
            tlv_type,
            _INFO.size,
            self.system_priority,
            self.system,
            self.key,
            self.port_priority,
            self.port,
            self.state,
        )


@dataclass(frozen=True)
class Lacpdu:
    actor: PortInfo
    partner: PortInfo
    collector_max_delay: int = 0


def _unpack_info(data: bytes, offset: int, tlv_type: int) -> PortInfo:
    kind, length, sys_prio, system, key, port_prio, port, state = _INFO.unpack_from(data, offset)
    if kind != tlv_type or length != _INFO.size:
        raise NotLacp(f"TLV {kind}/{length} where {tlv_type}/{_INFO.size} belongs")
    return PortInfo(system, key, port, state, sys_prio, port_prio)


def parse_lacpdu(payload: bytes) -> Lacpdu:
    """The slow-protocols payload (after the Ethernet header) as an LACPDU."""
    if len(payload) < LACPDU_LENGTH:
        raise NotLacp(f"{len(payload)} bytes, an LACPDU has {LACPDU_LENGTH}")
    if payload[0] != SUBTYPE_LACP or payload[1] != 1:
        raise NotLacp(f"subtype {payload[0]} version {payload[1]}")
    actor = _unpack_info(payload, 2, 1)
    partner = _unpack_info(payload, 2 + _INFO.size, 2)
    kind, length, delay = _COLLECTOR.unpack_from(payload, 2 + 2 * _INFO.size)
    if kind != 3 or length != _COLLECTOR.size:
        raise NotLacp(f"collector TLV {kind}/{length}")
    return Lacpdu(actor, partner, delay)


def build_lacpdu(pdu: Lacpdu) -> bytes:
    return b"".join(
        (
            bytes((SUBTYPE_LACP, 1)),
            pdu.actor.pack(1),
            pdu.partner.pack(2),
            _COLLECTOR.pack(3, _COLLECTOR.size, pdu.collector_max_delay),
            _TERMINATOR.pack(0, 0),
        )
    )


def lacp_frame(source_mac: bytes, pdu: Lacpdu) -> bytes:
    """The whole Ethernet frame, to the slow-protocols group address."""
    return SLOW_PROTOCOLS_GROUP + source_mac + struct.pack("!H", SLOW_PROTOCOLS) + build_lacpdu(pdu)


IN_SERVICE = ACTIVITY | AGGREGATION | SYNCHRONIZATION | COLLECTING | DISTRIBUTING


def answer(received: Lacpdu, ours: PortInfo) -> Lacpdu:
    """Our LACPDU for the port ``received`` came in on: the guest's actor as our partner,
    ourselves aggregating, in sync, collecting and distributing (with the guest's timeout
    so both ends expect the same rate)."""
    state = IN_SERVICE | (received.actor.state & SHORT_TIMEOUT)
    return Lacpdu(actor=replace(ours, state=state), partner=received.actor)


def in_service_with(pdu: Lacpdu, system: bytes) -> bool:
    """Whether a guest's LACPDU says its port aggregates with ``system`` and carries
    traffic (in sync, collecting, distributing): the proof that the bond took us."""
    wanted = AGGREGATION | SYNCHRONIZATION | COLLECTING | DISTRIBUTING
    return pdu.partner.system == system and pdu.actor.state & wanted == wanted
