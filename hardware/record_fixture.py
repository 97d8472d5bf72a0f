"""``record-fixture``: capture what the inventory reads from a machine, for golden tests.

Copies the relevant sysfs attributes (as files, with the symlinks that connect them,
never a blind walk of /sys), /proc files, the udev database, addresses, ethtool data
and optional command outputs into a directory that ``fixture_sources`` replays.

Standard library only: it runs inside minimal guests and rescue systems.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # allow running as a plain script inside a guest
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hardware import ethtool
from hardware.runner import command_file_name

NET_FILES = (
    "address",
    "addr_assign_type",
    "carrier",
    "speed",
    "duplex",
    "operstate",
    "type",
    "mtu",
    "ifindex",
    "iflink",
    "uevent",
    "dev_id",
    "flags",
    "tun_flags",
    "bonding/mode",
    "bonding/slaves",
    "bonding_slave/perm_hwaddr",
    "bridge/bridge_id",
)
DEVICE_FILES = ("vendor", "device", "subsystem_vendor", "subsystem_device", "class", "uevent")
BLOCK_FILES = (
    "uevent",
    "size",
    "removable",
    "ro",
    "dev",
    "serial",
    "wwid",
    "queue/rotational",
    "queue/logical_block_size",
    "queue/physical_block_size",
    "md/level",
    "dm/uuid",
    "dm/name",
)
BLOCK_DEVICE_FILES = ("model", "vendor", "rev", "serial", "wwid", "type", "uevent", "firmware_rev")
DMI_ENTRY_TYPES = ("0", "1", "2", "3", "16", "17")
CPU_FILES = (
    "topology/physical_package_id",
    "topology/core_id",
    "topology/die_id",
    "cpufreq/cpuinfo_max_freq",
    "cpufreq/cpuinfo_min_freq",
    "cpufreq/scaling_max_freq",
)
IPMI_NODES = ("ipmi0", "ipmi/0", "ipmidev/0")
COMMAND_TIMEOUT = 20


class Recorder:
    def __init__(self, out: Path, sysfs: Path = Path("/sys"), procfs: Path = Path("/proc")):
        self.out = out
        self.sysfs = sysfs
        self.procfs = procfs

    # -- sysfs copying -------------------------------------------------------------
    def _target(self, rel: str) -> Path:
        return self.out / "sys" / rel

    def copy_file(self, rel: str) -> None:
        source = self.sysfs / rel
        if source.is_symlink() or not source.is_file():
            return
        try:
            with open(source, "rb") as handle:
                data = handle.read(1 << 20)
        except OSError:
            return  # e.g. carrier of a down interface: unreadable means unknown
        target = self._target(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def copy_link(self, rel: str) -> str | None:
        """Recreate a sysfs symlink; returns its resolved path relative to sysfs."""
        source = self.sysfs / rel
        if not source.is_symlink():
            return None
        target = self._target(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        os.symlink(os.readlink(source), target)
        real = Path(os.path.realpath(source))
        try:
            return str(real.relative_to(os.path.realpath(self.sysfs)))
        except ValueError:
            return None

    def copy_dir_files(self, rel: str, names: tuple[str, ...]) -> None:
        self._target(rel).mkdir(parents=True, exist_ok=True)
        for name in names:
            self.copy_file(f"{rel}/{name}")

    def list_sys(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.sysfs / rel))
        except OSError:
            return []

    def record_device_chain(self, rel: str) -> None:
        """A device directory and a few parents: ids, uevent and the driver link."""
        current = rel
        for _ in range(4):
            if not current.startswith("devices/") or current.count("/") < 2:
                break
            self.copy_dir_files(current, DEVICE_FILES)
            self.copy_link(f"{current}/driver")
            current = current.rsplit("/", 1)[0]

    def record_net(self) -> None:
        for name in self.list_sys("class/net"):
            real = self.copy_link(f"class/net/{name}")
            if real is None:
                continue
            self.copy_dir_files(real, NET_FILES)
            device = self.copy_link(f"{real}/device")
            if device:
                self.record_device_chain(device)
            for entry in self.list_sys(real):
                if entry.startswith(("lower_", "upper_")) or entry == "master":
                    self.copy_link(f"{real}/{entry}")

    def record_block(self) -> None:
        for name in self.list_sys("class/block"):
            real = self.copy_link(f"class/block/{name}")
            self.copy_link(f"block/{name}")
            if real is None:
                continue
            self.copy_dir_files(real, BLOCK_FILES)
            for sub in ("holders", "slaves"):
                self._target(f"{real}/{sub}").mkdir(parents=True, exist_ok=True)
                for entry in self.list_sys(f"{real}/{sub}"):
                    self.copy_link(f"{real}/{sub}/{entry}")
            device = self.copy_link(f"{real}/device")
            if device:
                self.copy_dir_files(device, BLOCK_DEVICE_FILES)
                self.copy_link(f"{device}/driver")

    def record_dmi(self) -> None:
        real = self.copy_link("class/dmi/id")
        if real:
            for name in self.list_sys(real):
                self.copy_file(f"{real}/{name}")
        for entry in self.list_sys("firmware/dmi/entries"):
            if entry.split("-")[0] in DMI_ENTRY_TYPES:
                self.copy_dir_files(
                    f"firmware/dmi/entries/{entry}", ("raw", "type", "length", "handle")
                )
        self.copy_dir_files("firmware/dmi/tables", ("DMI", "smbios_entry_point"))
        if (self.sysfs / "firmware" / "efi").is_dir():
            self.copy_dir_files("firmware/efi", ("fw_platform_size",))

    def record_cpu(self) -> None:
        base = "devices/system/cpu"
        self.copy_dir_files(base, ("online", "present", "possible", "kernel_max"))
        for entry in self.list_sys(base):
            if re.fullmatch(r"cpu\d+", entry):
                self.copy_dir_files(f"{base}/{entry}", CPU_FILES)

    # -- everything else -----------------------------------------------------------
    def record_proc(self) -> None:
        (self.out / "proc").mkdir(parents=True, exist_ok=True)
        for name in ("cpuinfo", "meminfo", "cmdline", "net/vlan/config"):
            try:
                data = (self.procfs / name).read_bytes()
            except OSError:
                continue
            (self.out / "proc" / name).parent.mkdir(parents=True, exist_ok=True)
            (self.out / "proc" / name).write_bytes(data)

    def run(self, argv: list[str]) -> str | None:
        if shutil.which(argv[0]) is None:
            return None
        try:
            done = subprocess.run(argv, capture_output=True, timeout=COMMAND_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None

    def record_udev(self) -> None:
        if not Path("/run/udev/data").is_dir():
            return  # no udev database: the fixture replays uevent files instead
        text = self.run(["udevadm", "info", "--export-db"])
        if text is None:
            return
        keep = [
            block
            for block in text.split("\n\n")
            if "\nE: SUBSYSTEM=block" in block or "\nE: SUBSYSTEM=net" in block
        ]
        (self.out / "udev-db.txt").write_text("\n\n".join(keep) + "\n")

    def record_network(self) -> None:
        text = self.run(["ip", "-j", "addr"])
        if text is not None:
            (self.out / "ip-addr.json").write_text(json.dumps(json.loads(text), indent=1) + "\n")
        data = {
            name: {"permaddr": ethtool.permanent_mac(name), "driver": ethtool.driver_name(name)}
            for name in self.list_sys("class/net")
            if (self.sysfs / "class" / "net" / name).is_symlink()
        }
        (self.out / "ethtool.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")

    def ipmi_devices(self) -> list[str]:
        return [node for node in IPMI_NODES if os.path.exists("/dev/" + node)]

    def record_commands(self) -> None:
        commands = []
        if self.ipmi_devices():
            commands += [["ipmitool", "lan", "print", str(ch)] for ch in range(1, 12)]
            commands.append(["ipmitool", "lan6", "print"])
        commands.append(["dmidecode", "--type", "17"])
        for argv in commands:
            output = self.run(argv)
            if output is not None:
                (self.out / "commands").mkdir(exist_ok=True)
                (self.out / "commands" / command_file_name(argv)).write_text(output)

    def record_host(self) -> None:
        host = {
            "hostname": socket.gethostname(),
            "machine": platform.machine(),
            "kernel": platform.release(),
            "cpu_count": os.cpu_count(),
            "ipmi_devices": self.ipmi_devices(),
            "recorded_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "recorder": "tacet record-fixture 1",
        }
        (self.out / "host.json").write_text(json.dumps(host, indent=1, sort_keys=True) + "\n")

    def record(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for step in (
            self.record_net,
            self.record_block,
            self.record_dmi,
            self.record_cpu,
            self.record_proc,
            self.record_udev,
            self.record_network,
            self.record_commands,
            self.record_host,
        ):
            try:
                step()
            except Exception as exc:  # keep recording the rest; say what went wrong
                print(f"record-fixture: {step.__name__} failed: {exc!r}", file=sys.stderr)


# -- scrubbing -------------------------------------------------------------------------
# A MAC in colon or dash form, optionally in pxelinux's ``01-`` (ARP type) prefixed form.
MAC_RE = re.compile(
    r"(?<![0-9A-Fa-f:-])(01-)?([0-9a-fA-F]{2}([:-])(?:[0-9a-fA-F]{2}\3){4}[0-9a-fA-F]{2})"
    r"(?![0-9A-Fa-f:-])"
)
SERIAL_PROPERTIES = (
    "ID_SERIAL_SHORT",
    "ID_SERIAL",
    "ID_SCSI_SERIAL",
    "ID_WWN",
    "ID_WWN_WITH_EXTENSION",
    "ID_WWN_VENDOR_EXTENSION",
)
DMI_SECRETS = (
    "product_serial",
    "product_uuid",
    "board_serial",
    "chassis_serial",
    "board_asset_tag",
    "chassis_asset_tag",
)


def _text_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def collect_secrets(root: Path) -> set[str]:
    """Serial-like values found in a recording (DMI serials, disk serials and WWNs)."""
    secrets: set[str] = set()
    for path in _text_files(root):
        if path.name in DMI_SECRETS or (path.name in ("serial", "wwid") and "/sys/" in str(path)):
            value = path.read_text(errors="replace").strip()
            if len(value) >= 4:
                secrets.add(value)
    udev = root / "udev-db.txt"
    if udev.exists():
        for line in udev.read_text().splitlines():
            key, _, value = line.removeprefix("E: ").partition("=")
            if key in SERIAL_PROPERTIES and len(value) >= 4:
                secrets.add(value)
    return secrets


def scrub(root: Path) -> None:
    """Replace MACs and serials consistently across every recorded text file."""
    macs: dict[str, str] = {}
    secrets = sorted(collect_secrets(root), key=len, reverse=True)
    replacement = {s: f"SCRUBBED{n:04d}" for n, s in enumerate(secrets)}

    def fake_mac(match: re.Match[str]) -> str:
        prefix, text, sep = match.group(1) or "", match.group(2).lower(), match.group(3)
        canonical = text.replace("-", ":")
        if canonical in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"):
            return match.group(0)
        fake = macs.setdefault(
            canonical, f"02:00:00:00:{len(macs) // 256:02x}:{len(macs) % 256:02x}"
        )
        return prefix + fake.replace(":", sep)

    for path in _text_files(root):
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary SMBIOS entries: only sizes are read from them
        new = MAC_RE.sub(fake_mac, text)
        for secret, fake in replacement.items():
            new = new.replace(secret, fake)
        if new != text:
            path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="record-fixture", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "output", type=Path, help="directory to create (must not exist or be empty)"
    )
    parser.add_argument("--scrub", action="store_true", help="replace MACs and serial numbers")
    parser.add_argument("--sysfs", type=Path, default=Path("/sys"), help=argparse.SUPPRESS)
    parser.add_argument("--procfs", type=Path, default=Path("/proc"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.output.exists() and any(args.output.iterdir()):
        parser.error(f"{args.output}: exists and is not empty")
    Recorder(args.output, args.sysfs, args.procfs).record()
    if args.scrub:
        scrub(args.output)
    print(f"recorded {sum(1 for _ in args.output.rglob('*'))} entries into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
