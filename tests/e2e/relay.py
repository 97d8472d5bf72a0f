"""A userspace link partner for a guest's NICs: VLAN tags and bond members, checked.

The kernel the tests run on may lack 8021q and bonding, so the host end of a tagged or
bonded link cannot be a kernel device. This relay is that end instead: it carries
Ethernet frames between one or more guest NICs (QEMU ``-netdev dgram`` backends, one
Unix datagram per frame) and one TAP device inside a network namespace the test
created, the host's side of the wire. On the way it enforces, and counts, what the
test wants to prove:

* ``vlan=100``: frames from the guest must carry an 802.1Q tag with VID 100; the tag
  is stripped before the TAP and added to every frame from it. Untagged frames, another
  VID and 802.1ad (QinQ, 0x88a8) outer tags are dropped and counted per reason and
  ethertype, so a test can assert "tagged IPv4 > 0, untagged IPv4 == 0". Without
  ``vlan``, a tagged frame from the guest is the error.
* several members (a bond): frames from any live member reach the TAP; towards the
  guest, a frame goes to the member its destination MAC was last seen on (else the
  member that sent last, else every live member). ``fail(member)`` drops everything on
  that member both ways and counts it: the link is dead but its carrier stays up, as
  the bond's ARP monitor sees a failed switch port. For the MII monitor (the default,
  ``miimon``) the guest must see carrier loss: take the link down in QEMU as well
  (``qmp.set_link(socket, member, up=False)``; the netdev ids are the member names).
* ``lacp=True``: the relay answers each LACPDU (``lacp.answer``), so a Linux 802.3ad
  bond aggregates the members with it; ``lacp_in_service(member)`` says whether the
  guest's last LACPDU on that member reports it in sync, collecting and distributing
  with us. Without it a Linux bond still passes traffic, over one member only.

Why ``dgram`` over Unix sockets: QEMU (7.2 and later) sends each frame as one datagram
and takes each datagram as one frame, so no framing code and no ports to pick (nothing
another test on the machine can take first); the sockets live in a private directory
the relay removes when it stops.

How an e2e test uses it (``test_relay_guest.py`` does this)::

    with Namespace("tacet-vlan") as ns:
        ns.add_tap("wire0", ipaddress.IPv4Network("192.0.2.0/24"), ["192.0.2.1"])
        with Relay(ns.open_tap("wire0"), members=("lan1",), vlan=100) as relay:
            vm = VM(..., extra_args=relay.qemu_args(["52:54:00:7a:e2:11"]))
            ...  # boot; the guest puts 192.0.2.10 on lan1.100
            ns.wait_for_listener("192.0.2.10", AGENT_PORT, 120)
            assert relay.counters.get(Event.ACCEPTED, ethertype=ETH_P_IP) > 0
            assert relay.counters.get(Event.UNTAGGED) == 0

A bond: ``Relay(fd, members=("lan1", "lan2"), lacp=True)`` and
``relay.qemu_args([mac1, mac2])`` (virtio NICs get ``speed``/``duplex``: 802.3ad
aggregates only full-duplex ports); then ``relay.lacp_in_service(member)`` for each
member. To fail the active member for the MII monitor: ``qmp.qmp_args(path)`` among the
VM's arguments, then ``relay.fail(member)`` and ``qmp.set_link(path, member, up=False)``;
``relay.switch.active_member()`` names the member the guest sends on.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import struct
import tempfile
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from . import lacp

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_HEADER = 14
MAX_FRAME = 65536

# The relay's LACP system id (locally administered); member i sends from ...:i+1.
LACP_SYSTEM = bytes.fromhex("02ac7e000000")
LACP_KEY = 1


class Event:
    """What the counters count, per member (None: the TAP side) and ethertype."""

    # from the guest
    ACCEPTED = "accepted"  # passed on to the TAP (ethertype: the frame's, untagged)
    UNTAGGED = "untagged"  # dropped: no tag on a VLAN link
    WRONG_VID = "wrong-vid"  # dropped: 802.1Q tag with another VID (ethertype: inner)
    QINQ = "qinq"  # dropped: an 802.1ad outer tag
    UNEXPECTED_TAG = "unexpected-tag"  # dropped: tagged on an untagged link
    RUNT = "runt"  # dropped: shorter than an Ethernet header
    LINK_DOWN = "link-down"  # dropped: the member is failed
    SLOW_PROTOCOL = "slow-protocol"  # dropped: LACP/marker with LACP off, or not LACP
    LACPDU = "lacpdu"  # an LACPDU taken (and answered when LACP is on)
    # towards the guest
    SENT = "sent"  # written to the member's socket (ethertype: before tagging)
    LINK_DOWN_TO_GUEST = "link-down-to-guest"  # not sent: the member is failed
    NO_LIVE_MEMBER = "no-live-member"  # not sent: every member failed
    GUEST_ABSENT = "guest-absent"  # not sent: QEMU's socket is not there (yet)
    GUEST_FULL = "guest-full"  # not sent: QEMU's socket queue is full (TCP resends it)
    LACPDU_SENT = "lacpdu-sent"
    # the TAP
    FROM_TAP = "from-tap"
    TAP_FULL = "tap-full"  # the TAP's queue refused a frame


class Counters:
    """Thread-safe counts keyed by (member, event, ethertype)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str | None, str, int | None]] = Counter()

    def add(self, member: str | None, event: str, ethertype: int | None = None) -> None:
        with self._lock:
            self._counts[(member, event, ethertype)] += 1

    def get(self, event: str, member: str | None = None, ethertype: int | None = None) -> int:
        """The sum over every member (or ``member``) and ethertype (or ``ethertype``)."""
        with self._lock:
            return sum(
                n
                for (m, e, t), n in self._counts.items()
                if e == event
                and (member is None or m == member)
                and (ethertype is None or t == ethertype)
            )

    def snapshot(self) -> dict[tuple[str | None, str, int | None], int]:
        with self._lock:
            return dict(self._counts)


def ethertype(frame: bytes) -> int:
    return int.from_bytes(frame[12:14], "big")


def add_tag(frame: bytes, vid: int) -> bytes:
    """``frame`` with an 802.1Q tag (priority 0) after the MAC addresses."""
    return frame[:12] + struct.pack("!HH", ETH_P_8021Q, vid & 0x0FFF) + frame[12:]


def check_from_guest(frame: bytes, vlan: int | None) -> tuple[str, bytes | None, int | None]:
    """(event, the frame for the TAP or None when dropped, ethertype to count): the
    VLAN rule alone, a pure function."""
    if len(frame) < ETH_HEADER:
        return Event.RUNT, None, None
    kind = ethertype(frame)
    if kind == ETH_P_8021AD:
        return Event.QINQ, None, kind
    if kind == ETH_P_8021Q:
        if len(frame) < ETH_HEADER + 4:
            return Event.RUNT, None, kind
        inner = int.from_bytes(frame[16:18], "big")
        if vlan is None:
            return Event.UNEXPECTED_TAG, None, inner
        if int.from_bytes(frame[14:16], "big") & 0x0FFF != vlan:
            return Event.WRONG_VID, None, inner
        return Event.ACCEPTED, frame[:12] + frame[16:], inner
    if vlan is not None:
        return Event.UNTAGGED, None, kind
    return Event.ACCEPTED, frame, kind


class Switch:
    """The relay's decisions, without I/O: what goes where, what is learned and counted."""

    def __init__(
        self, members: Sequence[str], vlan: int | None, lacp_on: bool, counters: Counters
    ) -> None:
        if not members:
            raise ValueError("a relay needs at least one member")
        if vlan is not None and not 1 <= vlan <= 4094:
            raise ValueError(f"VLAN id {vlan} is not in 1..4094")
        self.members = list(members)
        self.vlan = vlan
        self.lacp_on = lacp_on
        self.counters = counters
        self._lock = threading.Lock()
        self._failed: set[str] = set()
        self._seen_on: dict[bytes, str] = {}  # guest MAC -> member
        self._last_sender: str | None = None
        self._last_lacpdu: dict[str, tuple[lacp.Lacpdu, bytes]] = {}

    def fail(self, member: str) -> None:
        self._known(member)
        with self._lock:
            self._failed.add(member)

    def restore(self, member: str) -> None:
        self._known(member)
        with self._lock:
            self._failed.discard(member)

    def _known(self, member: str) -> None:
        if member not in self.members:
            raise KeyError(f"no member {member!r} (members: {', '.join(self.members)})")

    def active_member(self, mac: bytes | None = None) -> str | None:
        """Where a frame to ``mac`` would go: the member it was seen on, else the last
        sender's."""
        with self._lock:
            return self._seen_on.get(mac or b"", self._last_sender)

    def last_lacpdu(self, member: str) -> lacp.Lacpdu | None:
        with self._lock:
            found = self._last_lacpdu.get(member)
        return found[0] if found else None

    def last_lacpdu_frame(self, member: str) -> bytes | None:
        """The guest's last LACPDU on ``member`` as it came, Ethernet header and all."""
        with self._lock:
            found = self._last_lacpdu.get(member)
        return found[1] if found else None

    def from_guest(self, member: str, frame: bytes) -> tuple[bytes | None, bytes | None]:
        """(frame for the TAP, frame back to this member), either may be None."""
        with self._lock:
            failed = member in self._failed
        if failed:
            self.counters.add(member, Event.LINK_DOWN, ethertype(frame) if frame else None)
            return None, None
        if len(frame) >= ETH_HEADER and ethertype(frame) == lacp.SLOW_PROTOCOLS:
            return None, self._slow_protocol(member, frame)
        event, out, kind = check_from_guest(frame, self.vlan)
        self.counters.add(member, event, kind)
        if out is not None:
            with self._lock:
                self._seen_on[frame[6:12]] = member
                self._last_sender = member
        return out, None

    def _slow_protocol(self, member: str, frame: bytes) -> bytes | None:
        try:
            pdu = lacp.parse_lacpdu(frame[ETH_HEADER:])
        except lacp.NotLacp:
            self.counters.add(member, Event.SLOW_PROTOCOL, lacp.SLOW_PROTOCOLS)
            return None
        if not self.lacp_on:
            self.counters.add(member, Event.SLOW_PROTOCOL, lacp.SLOW_PROTOCOLS)
            return None
        self.counters.add(member, Event.LACPDU, lacp.SLOW_PROTOCOLS)
        with self._lock:
            self._last_lacpdu[member] = (pdu, frame)
        index = self.members.index(member) + 1
        ours = lacp.PortInfo(system=LACP_SYSTEM, key=LACP_KEY, port=index, state=0)
        source = LACP_SYSTEM[:5] + bytes((index,))
        return lacp.lacp_frame(source, lacp.answer(pdu, ours))

    def from_tap(self, frame: bytes) -> list[tuple[str, bytes]]:
        """(member, frame) pairs to send towards the guest."""
        self.counters.add(None, Event.FROM_TAP, ethertype(frame) if frame else None)
        if len(frame) < ETH_HEADER:
            self.counters.add(None, Event.RUNT)
            return []
        kind = ethertype(frame)
        out = frame if self.vlan is None else add_tag(frame, self.vlan)
        with self._lock:
            live = [m for m in self.members if m not in self._failed]
            chosen = self._seen_on.get(frame[0:6], self._last_sender)
            chosen_failed = chosen in self._failed
        if chosen is not None and chosen_failed:
            self.counters.add(chosen, Event.LINK_DOWN_TO_GUEST, kind)
            return []
        if chosen is not None:
            return [(chosen, out)]
        if not live:
            self.counters.add(None, Event.NO_LIVE_MEMBER, kind)
        return [(member, out) for member in live]


class Relay:
    """The I/O around a ``Switch``: one thread polling the TAP and the members' sockets.

    Takes ownership of ``tap_fd`` (closed on exit). Members are QEMU netdev ids too.
    """

    def __init__(
        self,
        tap_fd: int,
        members: Sequence[str] = ("relay0",),
        vlan: int | None = None,
        lacp: bool = False,
    ) -> None:
        self.counters = Counters()
        self.switch = Switch(members, vlan, lacp, self.counters)
        self.members = list(members)
        self._tap = tap_fd
        self._directory: Path | None = None
        self._sockets: dict[str, socket.socket] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.error: BaseException | None = None

    # where QEMU and the relay meet
    def relay_path(self, member: str) -> Path:
        return self._dir() / f"{member}.relay"

    def guest_path(self, member: str) -> Path:
        return self._dir() / f"{member}.guest"

    def _dir(self) -> Path:
        if self._directory is None:
            raise RuntimeError("the relay is not running")
        return self._directory

    def netdev(self, member: str) -> str:
        """QEMU's ``-netdev`` value for ``member`` (its id is the member's name)."""
        return (
            f"dgram,id={member},local.type=unix,local.path={self.guest_path(member)},"
            f"remote.type=unix,remote.path={self.relay_path(member)}"
        )

    def qemu_args(self, macs: Sequence[str], nic: str = "virtio-net-pci") -> list[str]:
        """``-netdev``/``-device`` pairs, one NIC per member, in member order."""
        if len(macs) != len(self.members):
            raise ValueError(f"{len(self.members)} members, {len(macs)} MAC addresses")
        # No option ROM: the guest network-boots from its first NIC, never these. A Linux
        # 802.3ad bond aggregates only full-duplex ports; virtio reports none unless told.
        extra = ",romfile="
        if nic.startswith("virtio-net"):
            extra += ",speed=1000,duplex=full"
        args: list[str] = []
        for member, mac in zip(self.members, macs, strict=True):
            args += ["-netdev", self.netdev(member)]
            args += ["-device", f"{nic},netdev={member},mac={mac}{extra}"]
        return args

    # the test's hooks
    def fail(self, member: str) -> None:
        self.switch.fail(member)

    def restore(self, member: str) -> None:
        self.switch.restore(member)

    def lacp_in_service(self, member: str) -> bool:
        pdu = self.switch.last_lacpdu(member)
        return pdu is not None and lacp.in_service_with(pdu, LACP_SYSTEM)

    def __enter__(self) -> Relay:
        # Short and private: a Unix socket path has room for 107 bytes only.
        self._directory = Path(tempfile.mkdtemp(prefix="tacet-relay-"))
        try:
            for member in self.members:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sockets[member] = sock
                sock.bind(str(self.relay_path(member)))
                sock.setblocking(False)
            os.set_blocking(self._tap, False)
            self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
            self._thread.start()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(10)
        self._close()

    def _close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self._wake_r.close()
        self._wake_w.close()
        if self._tap >= 0:
            os.close(self._tap)
            self._tap = -1
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def _run(self) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._wake_r, selectors.EVENT_READ, None)
                selector.register(self._tap, selectors.EVENT_READ, "")
                for member, sock in self._sockets.items():
                    selector.register(sock, selectors.EVENT_READ, member)
                while not self._stopping.is_set():
                    for key, _ in selector.select():
                        if key.data == "":
                            self._drain_tap()
                        elif key.data is not None:
                            self._drain_member(key.data)
        except BaseException as exc:  # a test reads it; the thread must not die silently
            self.error = exc
            raise

    def _drain_tap(self) -> None:
        while True:
            try:
                frame = os.read(self._tap, MAX_FRAME)
            except BlockingIOError:
                return
            for member, out in self.switch.from_tap(frame):
                self._send(member, out, ethertype(frame), Event.SENT)

    def _drain_member(self, member: str) -> None:
        sock = self._sockets[member]
        while True:
            try:
                frame = sock.recv(MAX_FRAME)
            except BlockingIOError:
                return
            to_tap, reply = self.switch.from_guest(member, frame)
            if reply is not None:
                self._send(member, reply, lacp.SLOW_PROTOCOLS, Event.LACPDU_SENT)
            if to_tap is not None:
                try:
                    os.write(self._tap, to_tap)
                except BlockingIOError:
                    self.counters.add(None, Event.TAP_FULL, ethertype(to_tap))

    def _send(self, member: str, frame: bytes, kind: int, event: str) -> None:
        try:
            self._sockets[member].sendto(frame, str(self.guest_path(member)))
        except (FileNotFoundError, ConnectionRefusedError):
            self.counters.add(member, Event.GUEST_ABSENT, kind)
            return
        except BlockingIOError:
            self.counters.add(member, Event.GUEST_FULL, kind)
            return
        self.counters.add(member, event, kind)
