"""Constants and message shapes of the agent's HTTP API (docs/protocol.md)."""

from __future__ import annotations

from typing import Any

DEFAULT_PORT = 9999
API_VERSION = "v1"

# command_status values of a command result
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
CLEAN_VERSION_MISMATCH = "CLEAN_VERSION_MISMATCH"

# Before any token exists only these commands are served (trust on first use).
UNAUTHENTICATED_COMMANDS = frozenset(
    {"poll.get_hardware_info", "poll.set_node_info", "poll.node_info"}
)


def fault(status: int, message: str) -> dict[str, str]:
    """The body of every error answer; ironic crashes on an error without ``faultstring``."""
    return {"faultcode": "Server" if status >= 500 else "Client", "faultstring": message}


def command_error(kind: str, code: int, message: str, details: str = "") -> dict[str, Any]:
    """The ``command_error`` object of a FAILED command result."""
    return {"type": kind, "code": code, "message": message, "details": details}
