"""Where the ramdisk finds its network configuration: thin I/O, roots injected.

- the kernel command line (``/proc/cmdline``);
- ``network_data.json`` in the node bundle (``/etc/tacet/``, unpacked by the kernel from
  the bundle's initrd before init starts);
- else on a config drive: the file system labelled ``config-2`` (ironic's virtual media
  for deploys without DHCP), mounted read-only just long enough to read
  ``openstack/latest/network_data.json``.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.config import DEFAULT_CMDLINE, read_kernel_cmdline
from wire.network_data import MAX_BYTES

BUNDLE_FILE = Path("/etc/tacet/network_data.json")
BY_LABEL = Path("/dev/disk/by-label")
CMDLINE = DEFAULT_CMDLINE
# ISO 9660 keeps the label as written; FAT file systems often upper-case it.
CONFIG_DRIVE_LABELS = ("config-2", "CONFIG-2")
CONFIG_DRIVE_FILE = "openstack/latest/network_data.json"
TIMEOUT = 30.0

Mount = Callable[[Path], contextlib.AbstractContextManager[Path]]
FindByLabel = Callable[[str], Path | None]


class CollectError(Exception):
    """A configuration source exists but cannot be read; the message is one line."""


@dataclass(frozen=True)
class Found:
    origin: str  # for the console: where the file came from
    text: bytes


@contextlib.contextmanager
def mount_read_only(device: Path) -> Iterator[Path]:
    """``device`` mounted read-only (no devices, no setuid, no exec) on a fresh directory."""
    with tempfile.TemporaryDirectory(prefix="tacet-config-drive-") as target:
        _call(["mount", "-o", "ro,nodev,nosuid,noexec", str(device), target])
        try:
            yield Path(target)
        finally:
            _call(["umount", target])


def _blkid_find(token: str) -> Path | None:
    """The first device ``blkid`` finds for ``token`` (``LABEL=...``, ``TYPE=...``),
    probed directly: udev may not have made its /dev/disk links yet."""
    try:
        done = subprocess.run(
            ["blkid", "-c", "/dev/null", "-l", "-o", "device", "-t", token],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    device = done.stdout.strip()
    return Path(device) if done.returncode == 0 and device else None


def blkid_by_label(label: str) -> Path | None:
    """The device whose file system has ``label``."""
    return _blkid_find(f"LABEL={label}")


def blkid_boot_medium() -> Path | None:
    """A CD-like file system (ISO 9660 or UDF): virtual media, once its driver is loaded."""
    for kind in ("iso9660", "udf"):
        found = _blkid_find(f"TYPE={kind}")
        if found is not None:
            return found
    return None


def _call(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CollectError(f"{argv[0]} failed: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise CollectError(f"{' '.join(argv)}: {detail}")


class Collector:
    """Reads the sources; every path and helper is a constructor argument (tests point
    them at a temporary tree)."""

    def __init__(
        self,
        bundle_file: Path = BUNDLE_FILE,
        by_label: Path = BY_LABEL,
        cmdline: Path = CMDLINE,
        mount: Mount = mount_read_only,
        find_by_label: FindByLabel = blkid_by_label,
        find_boot_medium: Callable[[], Path | None] = blkid_boot_medium,
        wait_seconds: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bundle_file = bundle_file
        self.by_label = by_label
        self.cmdline_file = cmdline
        self.mount = mount
        self.find_by_label = find_by_label
        self.find_boot_medium = find_boot_medium
        self.wait_seconds = wait_seconds
        self.sleep = sleep

    def cmdline(self) -> str:
        return read_kernel_cmdline(self.cmdline_file)

    def network_data(self) -> Found | None:
        """The bundle's network_data.json, else the config drive's, else None."""
        if self.bundle_file.is_file():
            origin = f"node bundle ({self.bundle_file})"
            return Found(origin, _read_bounded(self.bundle_file, origin))
        device = self.config_drive()
        if device is None:
            return None
        origin = f"config drive {device} ({CONFIG_DRIVE_FILE})"
        with self.mount(device) as root:
            path = root / CONFIG_DRIVE_FILE
            if not path.is_file():
                return None
            return Found(origin, _read_bounded(path, origin))

    def config_drive(self) -> Path | None:
        """The device labelled config-2, waiting up to ``wait_seconds`` for it to appear
        (its driver may still be loading), but not once another CD-like medium is there."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            device = self._labelled()
            if device is not None:
                return device
            if time.monotonic() >= deadline:
                return None
            if self.find_boot_medium() is not None:
                # The virtual media is here. It may be the config drive that appeared
                # since the look above: one more look decides.
                return self._labelled()
            self.sleep(0.5)

    def _labelled(self) -> Path | None:
        for label in CONFIG_DRIVE_LABELS:
            link = self.by_label / label
            if link.exists():
                return link.resolve()
        for label in CONFIG_DRIVE_LABELS:
            device = self.find_by_label(label)
            if device is not None:
                return device
        return None


def _read_bounded(path: Path, origin: str) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise CollectError(f"{origin}: cannot read: {exc.strerror or exc}") from None
    return data
