"""Running external tools with a timeout, behind one seam tests can replace."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

LOG = logging.getLogger(__name__)


class CommandRunner(Protocol):
    def run(self, argv: Sequence[str], timeout: float) -> str | None:
        """Standard output of a successful run, or None (missing tool, failure, timeout)."""


class SubprocessRunner:
    """Runs real commands; a missing binary is not an error, just no data."""

    def run(self, argv: Sequence[str], timeout: float) -> str | None:
        if shutil.which(argv[0]) is None:
            return None
        try:
            done = subprocess.run(
                list(argv),
                capture_output=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            LOG.warning("%s timed out after %ss", " ".join(argv), timeout)
            return None
        except OSError as exc:
            LOG.warning("%s could not run: %s", " ".join(argv), exc)
            return None
        if done.returncode != 0:
            LOG.info(
                "%s exited %d: %s",
                " ".join(argv),
                done.returncode,
                done.stderr.decode("utf-8", "replace").strip()[:200],
            )
            return None
        return done.stdout.decode("utf-8", "replace")


def command_file_name(argv: Sequence[str]) -> str:
    """File name under a fixture's ``commands/`` that holds this command's output."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", " ".join(argv)) + ".txt"


class RecordedRunner:
    """Replays outputs captured by ``record-fixture``; an unrecorded command is absent."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def run(self, argv: Sequence[str], timeout: float) -> str | None:
        path = self.directory / command_file_name(argv)
        try:
            return path.read_text()
        except OSError:
            return None
