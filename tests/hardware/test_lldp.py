import json
import os
import shutil
import struct
import subprocess
import sys
import uuid

import pytest

from hardware.lldp import parse_lldp_frame


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!H", (kind << 9) | len(value)) + value


SWITCH_MAC = bytes.fromhex("0488 5a92 ec54".replace(" ", ""))
LLDPDU = (
    tlv(1, b"\x04" + SWITCH_MAC)  # chassis id, subtype MAC
    + tlv(2, b"\x05Ethernet1/18")  # port id, subtype interface name
    + tlv(3, b"\x00\x78")  # TTL 120 s
    + tlv(5, b"leaf-07.example")  # system name
    + tlv(0, b"")
)
HEADER = bytes.fromhex("0180c200000e") + SWITCH_MAC + b"\x88\xcc"
EXPECTED = [
    [1, "04" + SWITCH_MAC.hex()],
    [2, b"\x05Ethernet1/18".hex()],
    [3, "0078"],
    [5, b"leaf-07.example".hex()],
]


def test_parse_frame():
    assert parse_lldp_frame(HEADER + LLDPDU) == EXPECTED


def test_parse_vlan_tagged_frame():
    tagged = HEADER[:12] + b"\x81\x00\x00\x2a" + b"\x88\xcc" + LLDPDU
    assert parse_lldp_frame(tagged) == EXPECTED


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        HEADER[:10],
        HEADER[:12] + b"\x08\x00" + LLDPDU,  # IPv4, not LLDP
        HEADER + LLDPDU[:5],  # truncated chassis TLV
        HEADER + tlv(0, b""),  # end TLV only: no neighbour data
    ],
)
def test_malformed_frames_are_rejected(frame):
    assert parse_lldp_frame(frame) is None


SENDER = """
import socket, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((sys.argv[1], 0))
frame = bytes.fromhex(sys.argv[2])
for _ in range(20):
    sock.send(frame)
    time.sleep(0.1)
"""

RECEIVER = """
import json, sys
from hardware.lldp import capture_lldp
print(json.dumps(capture_lldp([sys.argv[1], sys.argv[2]], float(sys.argv[3]))))
"""


@pytest.mark.host
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2")
def test_capture_through_the_kernel_in_a_network_namespace():
    """A real LLDP frame crosses a veth pair inside a private network namespace."""
    namespace = f"tacet-lldp-{uuid.uuid4().hex[:8]}"

    def ns(*argv: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", namespace, *argv], check=True, **kwargs)

    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        ns("ip", "link", "add", "nic0", "type", "veth", "peer", "name", "switch0")
        ns("ip", "link", "add", "quiet0", "type", "veth", "peer", "name", "quiet1")
        for link in ("nic0", "switch0", "quiet0", "quiet1"):
            ns("ip", "link", "set", link, "up")
        sender = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                namespace,
                sys.executable,
                "-c",
                SENDER,
                "switch0",
                (HEADER + LLDPDU).hex(),
            ]
        )
        try:
            done = ns(
                sys.executable,
                "-c",
                RECEIVER,
                "nic0",
                "quiet0",
                "3",
                capture_output=True,
                text=True,
                cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
            )
        finally:
            sender.kill()
            sender.wait()
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], check=False)

    found = json.loads(done.stdout)
    assert found == {"nic0": EXPECTED}  # quiet0 heard nothing within the timeout
