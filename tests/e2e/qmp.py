"""QEMU's machine protocol, the one command the tests need: a NIC's link up or down.

``set_link`` on a netdev id also sets the link of the NIC it is plugged into, so the
guest's driver reports carrier loss (virtio-net and e1000 both do) and a bond's MII
monitor fails the member over. Dropping frames in the relay alone looks, to the guest,
like a dead switch port with carrier: only the bond's ARP monitor notices that.
The VM needs ``-qmp unix:<path>,server=on,wait=off`` among its arguments.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


class QmpError(RuntimeError):
    pass


def qmp_args(path: Path) -> list[str]:
    return ["-qmp", f"unix:{path},server=on,wait=off"]


def execute(path: Path, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """Connect, leave capabilities negotiation, run ``command``, return its ``return``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        stream = sock.makefile("rwb")
        if "QMP" not in json.loads(stream.readline()):
            raise QmpError(f"no QMP greeting on {path}")
        _request(stream, "qmp_capabilities", None)
        return _request(stream, command, arguments)


def _request(stream: Any, command: str, arguments: dict[str, Any] | None) -> Any:
    message: dict[str, Any] = {"execute": command}
    if arguments is not None:
        message["arguments"] = arguments
    stream.write(json.dumps(message).encode() + b"\n")
    stream.flush()
    while True:
        line = stream.readline()
        if not line:
            raise QmpError(f"QEMU closed the monitor during {command}")
        answer = json.loads(line)
        if "return" in answer:
            return answer["return"]
        if "error" in answer:
            raise QmpError(f"{command}: {answer['error'].get('desc', answer['error'])}")
        # anything else is an asynchronous event: not the answer


def set_link(path: Path, netdev: str, up: bool) -> None:
    execute(path, "set_link", {"name": netdev, "up": up})
