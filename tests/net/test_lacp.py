"""The LACP partner's LACPDUs, byte for byte against 802.1AX's layout."""

from __future__ import annotations

import pytest

from tests.e2e import lacp

GUEST = bytes.fromhex("525400123457")
RELAY = bytes.fromhex("02ac7e000000")

# The first LACPDU a Linux bond sends on a 1 Gb/s full-duplex port, laid out by hand
# from the standard: no partner known yet, so the partner TLV is Linux's defaults.
FIRST_FROM_GUEST = bytes.fromhex(
    "01"  # subtype: LACP
    "01"  # version 1
    "01"
    "14"  # actor TLV, 20 bytes
    "ffff"
    "525400123457"  # system priority, system
    "0009"  # key
    "00ff"
    "0001"  # port priority, port
    "45"  # state: activity, aggregation, defaulted
    "000000"
    "02"
    "14"  # partner TLV, 20 bytes
    "ffff"
    "000000000000"
    "0001"
    "00ff"
    "0001"
    "01"  # state: activity
    "000000"
    "03"
    "10"  # collector TLV, 16 bytes
    "0000" + "00" * 12 + "00"  # max delay
    "00"  # terminator
     + "00" * 50
)

# What a Linux 6.12 802.3ad bond (the ramdisk's, in QEMU, lacp_rate fast) sent on its
# first member once the relay had answered: recorded by the e2e test
# test_agent_reached_over_an_lacp_bond, Ethernet header included.
LINUX_IN_SERVICE = bytes.fromhex(
    "0180c2000002" "5254007ae211" "8809"
    "0101" "0114" "ffff" "7ecf0819b411" "0009" "00ff" "0002" "3f" "000000"
    "0214" "8000" "02ac7e000000" "0001" "0080" "0001" "3f" "000000"
    "0310" "0000"
) + bytes(12 + 2 + 50)  # fmt: skip


def test_the_layout_is_110_bytes():
    assert lacp.LACPDU_LENGTH == 110 == len(FIRST_FROM_GUEST)


def test_parse_reads_every_field():
    pdu = lacp.parse_lacpdu(FIRST_FROM_GUEST)
    assert pdu.actor == lacp.PortInfo(
        system=GUEST, key=9, port=1, state=0x45, system_priority=0xFFFF, port_priority=0xFF
    )
    assert pdu.partner.system == bytes(6)
    assert pdu.partner.state == lacp.ACTIVITY
    assert pdu.collector_max_delay == 0


def test_build_gives_back_the_same_bytes():
    assert lacp.build_lacpdu(lacp.parse_lacpdu(FIRST_FROM_GUEST)) == FIRST_FROM_GUEST


def test_the_answer_mirrors_the_guest_and_is_in_service():
    ours = lacp.PortInfo(system=RELAY, key=1, port=2, state=0)
    frame = lacp.lacp_frame(
        RELAY[:5] + b"\x02", lacp.answer(lacp.parse_lacpdu(FIRST_FROM_GUEST), ours)
    )
    assert frame[:6] == bytes.fromhex("0180c2000002")
    assert frame[6:12] == bytes.fromhex("02ac7e000002")
    assert frame[12:14] == b"\x88\x09"
    body = frame[14:]
    assert len(body) == 110
    assert body[:4] == b"\x01\x01\x01\x14"
    # actor: priority 0x8000, our system, key 1, port priority 0x80, port 2, state 0x3d
    assert body[4:22] == bytes.fromhex("800002ac7e0000000001008000023d000000")
    # partner: the guest's actor information, copied field for field
    assert body[22:24] == b"\x02\x14"
    assert body[24:39] == FIRST_FROM_GUEST[4:19]
    assert body[42:46] == b"\x03\x10\x00\x00"  # collector, max delay 0
    assert body[58:] == bytes(52)  # terminator (type 0, length 0) and padding


def test_the_answer_keeps_the_guests_fast_rate():
    fast = bytearray(FIRST_FROM_GUEST)
    fast[18] |= lacp.SHORT_TIMEOUT
    ours = lacp.PortInfo(system=RELAY, key=1, port=1, state=0)
    answer = lacp.answer(lacp.parse_lacpdu(bytes(fast)), ours)
    assert answer.actor.state == lacp.IN_SERVICE | lacp.SHORT_TIMEOUT


def test_in_service_needs_us_as_partner_and_every_bit():
    pdu = lacp.parse_lacpdu(FIRST_FROM_GUEST)
    assert not lacp.in_service_with(pdu, RELAY)
    ours = lacp.PortInfo(system=RELAY, key=1, port=1, state=lacp.IN_SERVICE)
    synced = lacp.Lacpdu(actor=lacp.PortInfo(GUEST, 9, 1, 0x3D), partner=ours)
    assert lacp.in_service_with(synced, RELAY)
    not_distributing = lacp.Lacpdu(actor=lacp.PortInfo(GUEST, 9, 1, 0x1D), partner=ours)
    assert not lacp.in_service_with(not_distributing, RELAY)
    assert not lacp.in_service_with(synced, bytes.fromhex("02ac7e0000ff"))


@pytest.mark.parametrize(
    "payload",
    [
        FIRST_FROM_GUEST[:109],  # short
        b"\x02" + FIRST_FROM_GUEST[1:],  # a marker PDU
        FIRST_FROM_GUEST[:2] + b"\x02" + FIRST_FROM_GUEST[3:],  # actor TLV of another type
        FIRST_FROM_GUEST[:42] + b"\x03\x11" + FIRST_FROM_GUEST[44:],  # collector length
    ],
)
def test_what_is_not_an_lacpdu_is_refused(payload: bytes):
    with pytest.raises(lacp.NotLacp):
        lacp.parse_lacpdu(payload)


def test_a_real_linux_lacpdu_in_service_with_the_relay():
    assert len(LINUX_IN_SERVICE) == 14 + lacp.LACPDU_LENGTH
    pdu = lacp.parse_lacpdu(LINUX_IN_SERVICE[14:])
    assert pdu.actor == lacp.PortInfo(
        system=bytes.fromhex("7ecf0819b411"),
        key=9,
        port=2,
        state=0x3F,
        system_priority=0xFFFF,
        port_priority=0xFF,
    )
    assert pdu.partner == lacp.PortInfo(system=RELAY, key=1, port=1, state=0x3F)
    assert lacp.in_service_with(pdu, RELAY)
    assert lacp.build_lacpdu(pdu) == LINUX_IN_SERVICE[14:]
    # our answer to it names the guest's port exactly as the guest sent it
    ours = lacp.PortInfo(system=RELAY, key=1, port=1, state=0)
    assert lacp.answer(pdu, ours).partner == pdu.actor
