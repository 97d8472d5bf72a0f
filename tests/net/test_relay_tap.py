"""The relay against the kernel: a TAP device in a network namespace of the test's own,
and a fake guest on VLAN 100 that answers ARP and UDP. A UDP exchange from inside the
namespace proves both directions: the kernel's ARP request and datagram reach the guest
tagged, the guest's untagged-by-the-relay answers reach the kernel's socket."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid

import pytest

from tests.e2e.netns import Namespace
from tests.e2e.relay import ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, Event, Relay

GUEST_MAC = bytes.fromhex("525400123457")
HOST_IP = "192.0.2.1"
GUEST_IP = "192.0.2.10"
PORT = 7000
VID = 100

# Runs inside the namespace: one datagram to the guest, prints what comes back.
UDP_PEER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[3])))
sock.settimeout(10)
sock.sendto(b"ping", (sys.argv[2], int(sys.argv[3])))
data, peer = sock.recvfrom(100)
print(data.decode(), peer[0])
"""


def ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tagged_frame(dst: bytes, kind: int, payload: bytes) -> bytes:
    return dst + GUEST_MAC + struct.pack("!HHH", ETH_P_8021Q, VID, kind) + payload


def arp_reply(request: bytes) -> bytes:
    """``request``: the ARP payload the kernel sent."""
    asker_mac, asker_ip = request[8:14], request[14:18]
    body = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 2)
    body += GUEST_MAC + socket.inet_aton(GUEST_IP) + asker_mac + asker_ip
    return tagged_frame(asker_mac, ETH_P_ARP, body)


def udp_reply(to_mac: bytes, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", PORT, PORT, 8 + len(payload), 0) + payload  # no checksum
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
        socket.inet_aton(GUEST_IP), socket.inet_aton(HOST_IP),
    )  # fmt: skip
    header = header[:10] + struct.pack("!H", ipv4_checksum(header)) + header[12:]
    return tagged_frame(to_mac, ETH_P_IP, header + udp)


@pytest.mark.host
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2")
def test_a_vlan_guest_and_the_kernel_exchange_datagrams_through_the_relay():
    with Namespace(f"tacet-relay-{uuid.uuid4().hex[:8]}") as ns:
        ns.add_tap("wire0", ipaddress.IPv4Network("192.0.2.0/24"), [HOST_IP])
        with Relay(ns.open_tap("wire0"), vlan=VID) as relay:
            guest = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            guest.bind(str(relay.guest_path("relay0")))
            guest.settimeout(1)
            peer = subprocess.Popen(
                ns.command(sys.executable, "-c", UDP_PEER, HOST_IP, GUEST_IP, str(PORT)),
                stdout=subprocess.PIPE,
                text=True,
            )
            seen: list[bytes] = []
            deadline = time.monotonic() + 15
            try:
                while peer.poll() is None and time.monotonic() < deadline:
                    try:
                        received = guest.recv(65536)
                    except TimeoutError:
                        continue
                    seen.append(received)
                    inner = int.from_bytes(received[16:18], "big")
                    payload = received[18:]
                    if inner == ETH_P_ARP and payload[24:28] == socket.inet_aton(GUEST_IP):
                        guest.sendto(arp_reply(payload), str(relay.relay_path("relay0")))
                    elif inner == ETH_P_IP and payload[9] == 17 and payload[28:] == b"ping":
                        reply = udp_reply(received[6:12], b"pong")
                        guest.sendto(reply, str(relay.relay_path("relay0")))
                output, _ = peer.communicate(timeout=15)
            finally:
                if peer.poll() is None:
                    peer.kill()
                    peer.wait()
                guest.close()
            assert relay.error is None
        assert peer.returncode == 0, output
        assert output.split() == ["pong", GUEST_IP]
        # every frame the kernel sent reached the guest with the tag
        assert seen and all(f[12:16] == struct.pack("!HH", ETH_P_8021Q, VID) for f in seen)
        assert relay.counters.get(Event.ACCEPTED, ethertype=ETH_P_ARP) == 1
        assert relay.counters.get(Event.ACCEPTED, ethertype=ETH_P_IP) == 1
        assert relay.counters.get(Event.SENT, ethertype=ETH_P_ARP) >= 1
        assert relay.counters.get(Event.SENT, ethertype=ETH_P_IP) >= 1
