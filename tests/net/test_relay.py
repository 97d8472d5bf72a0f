"""The relay's rules (tags, members, LACP) on crafted frames, then its I/O over real
sockets: a datagram socket pair standing in for the TAP, Unix sockets for QEMU."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from tests.e2e import lacp
from tests.e2e.relay import (
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    LACP_SYSTEM,
    Counters,
    Event,
    Relay,
    Switch,
    add_tag,
    check_from_guest,
)
from tests.net.test_lacp import FIRST_FROM_GUEST

GUEST_MAC = bytes.fromhex("525400123457")
HOST_MAC = bytes.fromhex("0a0000000001")
BROADCAST = b"\xff" * 6


def frame(dst: bytes, src: bytes, kind: int, payload: bytes = b"x" * 46) -> bytes:
    return dst + src + struct.pack("!H", kind) + payload


def tagged(vid: int, kind: int, payload: bytes = b"x" * 46, tpid: int = ETH_P_8021Q) -> bytes:
    return HOST_MAC + GUEST_MAC + struct.pack("!HHH", tpid, vid, kind) + payload


def test_the_right_tag_is_stripped():
    event, out, kind = check_from_guest(tagged(100, ETH_P_IP), vlan=100)
    assert (event, kind) == (Event.ACCEPTED, ETH_P_IP)
    assert out == frame(HOST_MAC, GUEST_MAC, ETH_P_IP)


def test_priority_bits_do_not_hide_the_vid():
    event, out, _ = check_from_guest(tagged(0xA000 | 100, ETH_P_ARP), vlan=100)
    assert event == Event.ACCEPTED and out == frame(HOST_MAC, GUEST_MAC, ETH_P_ARP)


@pytest.mark.parametrize(
    ("sent", "vlan", "event", "kind"),
    [
        (tagged(200, ETH_P_IP), 100, Event.WRONG_VID, ETH_P_IP),
        (tagged(0, ETH_P_IPV6), 100, Event.WRONG_VID, ETH_P_IPV6),  # priority-tagged only
        (frame(HOST_MAC, GUEST_MAC, ETH_P_IP), 100, Event.UNTAGGED, ETH_P_IP),
        (tagged(100, ETH_P_8021Q, tpid=ETH_P_8021AD), 100, Event.QINQ, ETH_P_8021AD),
        (tagged(100, ETH_P_IP, tpid=ETH_P_8021AD), None, Event.QINQ, ETH_P_8021AD),
        (tagged(100, ETH_P_IP), None, Event.UNEXPECTED_TAG, ETH_P_IP),
        (b"\x00" * 13, 100, Event.RUNT, None),
        (tagged(100, ETH_P_IP)[:16], 100, Event.RUNT, ETH_P_8021Q),
    ],
)
def test_what_breaks_the_rule_is_dropped(sent: bytes, vlan: int | None, event: str, kind):
    assert check_from_guest(sent, vlan) == (event, None, kind)


def test_an_untagged_link_passes_untagged_frames_as_they_are():
    sent = frame(BROADCAST, GUEST_MAC, ETH_P_ARP)
    assert check_from_guest(sent, None) == (Event.ACCEPTED, sent, ETH_P_ARP)


def test_add_tag():
    assert add_tag(frame(GUEST_MAC, HOST_MAC, ETH_P_IP), 100) == (
        GUEST_MAC + HOST_MAC + bytes.fromhex("810000640800") + b"x" * 46
    )


def test_the_vid_must_be_a_real_one():
    with pytest.raises(ValueError):
        Switch(["a"], 4095, False, Counters())
    with pytest.raises(ValueError):
        Switch([], None, False, Counters())


def test_vlan_switch_counts_per_member_reason_and_ethertype():
    counters = Counters()
    switch = Switch(["a"], 100, False, counters)
    assert switch.from_guest("a", tagged(100, ETH_P_IP)) == (
        frame(HOST_MAC, GUEST_MAC, ETH_P_IP),
        None,
    )
    assert switch.from_guest("a", frame(HOST_MAC, GUEST_MAC, ETH_P_IP)) == (None, None)
    assert switch.from_guest("a", frame(HOST_MAC, GUEST_MAC, ETH_P_IPV6)) == (None, None)
    assert switch.from_guest("a", tagged(7, ETH_P_IP)) == (None, None)
    assert counters.get(Event.ACCEPTED, ethertype=ETH_P_IP) == 1
    assert counters.get(Event.UNTAGGED) == 2
    assert counters.get(Event.UNTAGGED, member="a", ethertype=ETH_P_IPV6) == 1
    assert counters.get(Event.WRONG_VID, ethertype=ETH_P_IP) == 1
    assert counters.get(Event.ACCEPTED, member="b") == 0
    # towards the guest the tag is added
    assert switch.from_tap(frame(GUEST_MAC, HOST_MAC, ETH_P_IP)) == [
        ("a", add_tag(frame(GUEST_MAC, HOST_MAC, ETH_P_IP), 100))
    ]


def test_bond_learns_the_member_the_guest_sends_on():
    counters = Counters()
    switch = Switch(["a", "b"], None, False, counters)
    to_guest = frame(GUEST_MAC, HOST_MAC, ETH_P_IP)
    # nothing learned yet: a frame goes to every member, as a switch floods
    assert [m for m, _ in switch.from_tap(to_guest)] == ["a", "b"]
    switch.from_guest("b", frame(BROADCAST, GUEST_MAC, ETH_P_ARP))
    assert switch.from_tap(to_guest) == [("b", to_guest)]
    assert [m for m, _ in switch.from_tap(frame(BROADCAST, HOST_MAC, ETH_P_ARP))] == ["b"]
    switch.from_guest("a", frame(HOST_MAC, GUEST_MAC, ETH_P_IP))
    assert switch.active_member(GUEST_MAC) == "a"
    assert switch.from_tap(to_guest) == [("a", to_guest)]


def test_a_failed_member_drops_both_ways_until_restored():
    counters = Counters()
    switch = Switch(["a", "b"], None, False, counters)
    switch.from_guest("a", frame(HOST_MAC, GUEST_MAC, ETH_P_IP))
    switch.fail("a")
    assert switch.from_guest("a", frame(HOST_MAC, GUEST_MAC, ETH_P_IP)) == (None, None)
    assert switch.from_tap(frame(GUEST_MAC, HOST_MAC, ETH_P_IP)) == []
    assert counters.get(Event.LINK_DOWN, member="a") == 1
    assert counters.get(Event.LINK_DOWN_TO_GUEST, member="a", ethertype=ETH_P_IP) == 1
    # the guest fails over: the other member is learned and used
    sent = frame(HOST_MAC, GUEST_MAC, ETH_P_ARP)
    assert switch.from_guest("b", sent) == (sent, None)
    assert [m for m, _ in switch.from_tap(frame(GUEST_MAC, HOST_MAC, ETH_P_IP))] == ["b"]
    switch.restore("a")
    assert switch.from_guest("a", sent) == (sent, None)
    with pytest.raises(KeyError):
        switch.fail("c")


def test_every_member_failed_sends_nothing():
    counters = Counters()
    switch = Switch(["a", "b"], None, False, counters)
    switch.fail("a")
    switch.fail("b")
    assert switch.from_tap(frame(BROADCAST, HOST_MAC, ETH_P_ARP)) == []
    assert counters.get(Event.NO_LIVE_MEMBER) == 1


def lacpdu_from_guest(body: bytes = FIRST_FROM_GUEST) -> bytes:
    return lacp.SLOW_PROTOCOLS_GROUP + GUEST_MAC + b"\x88\x09" + body


def test_lacpdus_are_answered_per_member_and_never_forwarded():
    counters = Counters()
    switch = Switch(["a", "b"], 100, True, counters)
    to_tap, reply = switch.from_guest("b", lacpdu_from_guest())
    assert to_tap is None and reply is not None
    assert reply[6:12] == LACP_SYSTEM[:5] + b"\x02"  # member b is port 2
    answer = lacp.parse_lacpdu(reply[14:])
    assert answer.actor.system == LACP_SYSTEM and answer.actor.port == 2
    assert answer.partner == lacp.parse_lacpdu(FIRST_FROM_GUEST).actor
    assert counters.get(Event.LACPDU, member="b") == 1
    assert switch.last_lacpdu("b") == lacp.parse_lacpdu(FIRST_FROM_GUEST)
    assert switch.last_lacpdu_frame("b") == lacpdu_from_guest()
    assert switch.last_lacpdu("a") is None
    # a slow-protocols frame that is not an LACPDU (a marker) is counted, not answered
    marker = lacpdu_from_guest(b"\x02" + FIRST_FROM_GUEST[1:])
    assert switch.from_guest("a", marker) == (None, None)
    assert counters.get(Event.SLOW_PROTOCOL, member="a") == 1


def test_without_lacp_an_lacpdu_is_counted_and_dropped():
    counters = Counters()
    switch = Switch(["a", "b"], None, False, counters)
    assert switch.from_guest("a", lacpdu_from_guest()) == (None, None)
    assert counters.get(Event.SLOW_PROTOCOL, member="a") == 1
    assert counters.get(Event.LACPDU) == 0


# --- the I/O, over sockets ----------------------------------------------------------


class FakeGuest:
    """What QEMU's dgram netdev is to the relay: a bound Unix datagram socket."""

    def __init__(self, relay: Relay, member: str) -> None:
        self.relay_path = relay.relay_path(member)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(relay.guest_path(member)))
        self.sock.settimeout(5)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, str(self.relay_path))

    def recv(self) -> bytes:
        return self.sock.recv(65536)

    def nothing_within(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(65536)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(5)
        return False


@pytest.fixture
def fake_tap() -> Iterator[tuple[int, socket.socket]]:
    """(the descriptor the relay takes, our end): datagram boundaries kept, like a TAP."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.settimeout(5)
    with ours:
        yield os.dup(theirs.fileno()), ours
    theirs.close()


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_relay_moves_tagged_frames_both_ways(fake_tap):
    fd, tap = fake_tap
    with Relay(fd, members=("relay0",), vlan=100) as relay:
        guest = FakeGuest(relay, "relay0")
        guest.send(tagged(100, ETH_P_IP))
        assert tap.recv(65536) == frame(HOST_MAC, GUEST_MAC, ETH_P_IP)
        guest.send(frame(HOST_MAC, GUEST_MAC, ETH_P_IP))
        guest.send(tagged(101, ETH_P_IP))
        tap.send(frame(GUEST_MAC, HOST_MAC, ETH_P_ARP))
        assert guest.recv() == add_tag(frame(GUEST_MAC, HOST_MAC, ETH_P_ARP), 100)
        assert wait_for(lambda: relay.counters.get(Event.WRONG_VID) == 1)
        assert relay.counters.get(Event.UNTAGGED, ethertype=ETH_P_IP) == 1
        assert wait_for(
            lambda: relay.counters.get(Event.SENT, member="relay0", ethertype=ETH_P_ARP) == 1
        )
        directory = relay.relay_path("relay0").parent
        assert relay.error is None
    assert not directory.exists()
    with pytest.raises(OSError):
        os.fstat(fd)  # the relay closed the TAP it was given


def test_relay_counts_frames_for_a_guest_not_started_yet(fake_tap):
    fd, tap = fake_tap
    with Relay(fd) as relay:
        tap.send(frame(BROADCAST, HOST_MAC, ETH_P_ARP))
        assert wait_for(lambda: relay.counters.get(Event.GUEST_ABSENT) == 1)


def test_relay_bond_with_lacp_and_a_failed_member(fake_tap):
    fd, tap = fake_tap
    with Relay(fd, members=("bond0", "bond1"), lacp=True) as relay:
        first, second = FakeGuest(relay, "bond0"), FakeGuest(relay, "bond1")
        first.send(lacpdu_from_guest())
        answer = lacp.parse_lacpdu(first.recv()[14:])
        assert answer.partner.system == GUEST_MAC
        assert not relay.lacp_in_service("bond0")
        # the guest, now matched, reports itself in service with us
        in_service = lacp.Lacpdu(actor=lacp.PortInfo(GUEST_MAC, 9, 1, 0x3D), partner=answer.actor)
        first.send(lacp.lacp_frame(GUEST_MAC, in_service))
        first.recv()
        assert wait_for(lambda: relay.lacp_in_service("bond0"))
        assert not relay.lacp_in_service("bond1")

        second.send(frame(HOST_MAC, GUEST_MAC, ETH_P_IP))
        assert tap.recv(65536) == frame(HOST_MAC, GUEST_MAC, ETH_P_IP)
        tap.send(frame(GUEST_MAC, HOST_MAC, ETH_P_IP))
        assert second.recv() == frame(GUEST_MAC, HOST_MAC, ETH_P_IP)
        assert first.nothing_within(0.2)

        relay.fail("bond1")
        second.send(frame(HOST_MAC, GUEST_MAC, ETH_P_IP))
        tap.send(frame(GUEST_MAC, HOST_MAC, ETH_P_IP))
        assert wait_for(lambda: relay.counters.get(Event.LINK_DOWN_TO_GUEST) == 1)
        assert relay.counters.get(Event.LINK_DOWN, member="bond1") == 1
        assert second.nothing_within(0.2)
        first.send(frame(HOST_MAC, GUEST_MAC, ETH_P_ARP))
        assert tap.recv(65536) == frame(HOST_MAC, GUEST_MAC, ETH_P_ARP)
        tap.send(frame(GUEST_MAC, HOST_MAC, ETH_P_IP))
        assert first.recv() == frame(GUEST_MAC, HOST_MAC, ETH_P_IP)


def test_qemu_arguments_name_the_members_and_their_sockets(fake_tap):
    fd, _ = fake_tap
    with Relay(fd, members=("bond0", "bond1")) as relay:
        args = relay.qemu_args(["52:54:00:00:00:01", "52:54:00:00:00:02"])
        assert args[0] == "-netdev"
        assert args[1] == (
            f"dgram,id=bond0,local.type=unix,local.path={relay.guest_path('bond0')},"
            f"remote.type=unix,remote.path={relay.relay_path('bond0')}"
        )
        assert (
            args[3]
            == "virtio-net-pci,netdev=bond0,mac=52:54:00:00:00:01,romfile=,speed=1000,duplex=full"
        )
        assert args[4:6] == ["-netdev", relay.netdev("bond1")]
        e1000 = relay.qemu_args(["52:54:00:00:00:01", "52:54:00:00:00:02"], nic="e1000")
        assert e1000[7] == "e1000,netdev=bond1,mac=52:54:00:00:00:02,romfile="
        assert len(str(relay.relay_path("bond1"))) < 100  # room in sockaddr_un
        with pytest.raises(ValueError):
            relay.qemu_args(["52:54:00:00:00:01"])
