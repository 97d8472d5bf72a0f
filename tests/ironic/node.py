"""The "bare-metal node" of the ironic tests: a loop device as its disk, Tacet as its ramdisk.

:class:`LoopDisk` attaches a sparse file in a temporary directory (``losetup``) and
detaches it again. :class:`LocalAgent` is one "boot of the ramdisk": ``tacet-agent`` in
active mode (``ipa-api-url``) as a local process, with a fresh state directory (a
ramdisk's /run is new on every boot), power actions only logged (``--power-backend
recording``: ironic's fake power driver does the "real" power changes) and the setting
``allow-loop-devices`` naming the test's loop device, the only one it may use.

The agent runs in a private mount namespace (``unshare --mount``) in which
``/sys/class/block`` and ``/sys/block`` list only the test's loop device. Erase steps
wipe every disk the agent sees; on a shared machine other loop devices (another
checkout's tests) must never be among them, so the agent sees a machine with one disk.
Devices themselves, /dev and the network are the host's: the agent reaches ironic on
127.0.0.1 and ironic calls it back on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.local_agent import agent_argv
from tests.ports import free_port

from .launcher import NO_PROXY, IronicError

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


class LoopDisk:
    """A sparse file attached as ``/dev/loopN`` (with partition scanning), detached on close."""

    def __init__(self, workdir: Path, size_mib: int = 128) -> None:
        if shutil.which("losetup") is None:
            raise IronicError("losetup is needed (util-linux; tools/setup installs it)")
        self.backing = workdir / "disk.img"
        with self.backing.open("wb") as f:
            f.truncate(size_mib * MIB)
        done = subprocess.run(
            ["losetup", "--find", "--show", "--partscan", str(self.backing)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise IronicError(f"losetup failed (root needed): {done.stderr.strip()}")
        self.device = done.stdout.strip()
        self.size = size_mib * MIB

    @property
    def name(self) -> str:
        return Path(self.device).name

    def sysfs_dir(self) -> Path:
        return Path("/sys/class/block", self.name).resolve()

    def read(self, offset: int, length: int) -> bytes:
        with open(self.device, "rb") as disk:
            disk.seek(offset)
            return disk.read(length)

    def write(self, offset: int, data: bytes) -> None:
        with open(self.device, "r+b") as disk:
            disk.seek(offset)
            disk.write(data)
            disk.flush()
            os.fsync(disk.fileno())

    def close(self) -> None:
        subprocess.run(["losetup", "--detach", self.device], check=False)
        self.backing.unlink(missing_ok=True)


# Run by ``sh`` inside the new mount namespace, then exec'd into the agent: the disk view
# of a machine whose only disk is the given loop device.
ONE_DISK_VIEW = r"""
set -eu
disk=$1; target=$2; shift 2
for dir in /sys/class/block /sys/block; do
  mount -t tmpfs -o mode=0755,size=64k tacet-one-disk "$dir"
  ln -s "$target" "$dir/$disk"
done
exec "$@"
"""


def deploy_kernel_params(pxe_config: str) -> str:
    """The kernel parameters of the ``deploy`` entry of a PXE config ironic wrote: the
    ``append`` line of pxelinux's ``label deploy`` or the ``linux`` line of GRUB's
    ``menuentry "deploy"``, without the initrd/kernel paths."""
    in_deploy = False
    for raw in pxe_config.splitlines():
        line = raw.strip()
        words = line.split()
        if not words:
            continue
        if words[0] in ("label", "menuentry"):
            in_deploy = words[1].strip('"{') == "deploy" if len(words) > 1 else False
            continue
        if in_deploy and words[0] == "append":
            return " ".join(w for w in words[1:] if not w.startswith("initrd="))
        if in_deploy and words[0] in ("linux", "linuxefi"):
            return " ".join(words[2:])
    raise IronicError(f"no deploy entry in the PXE config ironic wrote:\n{pxe_config}")


def ramdisk_cmdline(tftp_root: Path, mac: str) -> str:
    """The command line a node with ``mac`` would boot its ramdisk with, from the PXE
    config ironic wrote for it (``ipappend 2`` adds BOOTIF), so the agent gets exactly
    ironic's ``ipa-*`` parameters."""
    dashed = "01-" + mac.lower().replace(":", "-")
    # pxelinux's name in BIOS mode, GRUB's in UEFI mode: links to the node's config.
    candidates = [tftp_root / "pxelinux.cfg" / dashed, tftp_root / f"grub.cfg-{dashed}"]
    for config in candidates:
        if config.exists():
            return f"{deploy_kernel_params(config.read_text())} BOOTIF={dashed}"
    raise IronicError(f"ironic wrote no PXE config for {mac} (none of {candidates})")


COLLECT = (
    "import json, sys\n"
    "from hardware import collect_inventory, live_sources\n"
    "sources = live_sources(cmdline=sys.argv[1])\n"
    "print(json.dumps(collect_inventory(sources, allow_loop_devices=True).to_dict()))\n"
)


def inventory_in_one_disk_view(disk: LoopDisk, cmdline: str) -> dict[str, Any]:
    """What the ``hardware`` collector (``python -m hardware``'s) reports on this machine
    as the agent sees it: the same one-disk view, loop devices allowed, and the agent's
    kernel command line (BOOTIF names the PXE interface)."""
    view = ["sh", "-c", ONE_DISK_VIEW, "sh", disk.name, str(disk.sysfs_dir())]
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            *view,
            sys.executable,
            "-c",
            COLLECT,
            cmdline,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if done.returncode != 0:
        raise IronicError(f"collecting the inventory failed: {done.stderr[-2000:]}")
    inventory: dict[str, Any] = json.loads(done.stdout)
    return inventory


class LocalAgent:
    """One boot of the ramdisk: ``start`` it when the node waits for its agent, ``stop``
    it when ironic is done with it (the node "reboots" into its instance)."""

    def __init__(
        self,
        workdir: Path,
        boot_cmdline: str,
        disk: LoopDisk,
        settings: dict[str, str] | None = None,
    ) -> None:
        """``boot_cmdline``: what ironic's boot interface gave the ramdisk (with
        ``ipa-api-url``), see :func:`ramdisk_cmdline`; ``settings``: agent settings for a
        TOML file in its configuration directory (as a ramdisk image would bake in)."""
        if shutil.which("unshare") is None:
            raise IronicError("unshare is needed (util-linux)")
        self.workdir = workdir
        self.boot_cmdline = boot_cmdline
        self.disk = disk
        self.port = free_port()
        self.settings = settings or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "agent.log"

    def cmdline(self) -> str:
        """ironic's command line, plus the listener on 127.0.0.1 and a free port instead
        of every address on port 9999 (a dev machine's agent must not be reachable from
        outside)."""
        return f"{self.boot_cmdline} ipa-listen-host=127.0.0.1 ipa-listen-port={self.port}"

    def argv(self) -> list[str]:
        return agent_argv(self.workdir)

    def wrapper(self) -> list[str]:
        """A command the whole launch runs under (none here; see PassiveAgent)."""
        return []

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "etc").mkdir(mode=0o700, exist_ok=True)
        settings = {"allow-loop-devices": self.disk.name, **self.settings}
        lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
        (self.workdir / "etc" / "50-test.toml").write_text("\n".join(lines) + "\n")
        (self.workdir / "cmdline").write_text(self.cmdline() + "\n")
        view = ["sh", "-c", ONE_DISK_VIEW, "sh", self.disk.name, str(self.disk.sysfs_dir())]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    *self.wrapper(),
                    *["unshare", "--mount", "--propagation", "private", "--"],
                    *view,
                    *self.argv(),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, **NO_PROXY},
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def problem(self) -> str | None:
        """Why waiting for this agent is pointless, or None: it exited, or it started in
        passive mode (it would never call ironic)."""
        if self.process is None:
            return None
        if self.process.poll() is not None:
            return f"the agent exited with {self.process.returncode}\n{self.tail()}"
        if " mode=passive " in self.log_text():
            return f"the agent runs in passive mode with ironic's command line\n{self.tail()}"
        return None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def tail(self, lines: int = 60) -> str:
        text = self.log_text().splitlines()[-lines:]
        return f"--- {self.log} (last {len(text)} lines) ---\n" + "\n".join(text)

    def wait_for_log(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return
            if not self.running():
                break
            time.sleep(0.2)
        raise IronicError(f"the agent never logged {needle!r}\n{self.tail()}")
