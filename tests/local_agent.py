"""How the tests start a real ``tacet-agent`` process on this machine."""

from __future__ import annotations

import sys
from pathlib import Path


def agent_argv(workdir: Path) -> list[str]:
    """``python -m agent`` reading ``workdir``'s cmdline file and config directory, with a
    state directory of its own and power actions only recorded (never this machine's)."""
    return [
        sys.executable,
        "-m",
        "agent",
        "--cmdline-file",
        str(workdir / "cmdline"),
        "--config-dir",
        str(workdir / "etc"),
        "--state-dir",
        str(workdir / "state"),
        "--power-backend",
        "recording",
    ]
