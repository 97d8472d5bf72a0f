"""The boot step: choose the network configuration and write it for systemd-networkd.

Runs once, before systemd-networkd starts (tacet-network.service). In order of precedence:

1. ``network_data.json`` (node bundle, else config drive), rendered to ``10-tacet-*``;
2. the kernel command line's ``ip=``/``vlan=``/``bond=``/``nameserver=``/... through
   systemd-network-generator, installed as ``20-tacet-cmdline-*``;
3. nothing written: the ramdisk's ``80-tacet-wired.network`` (DHCP and IPv6 RA on every NIC).

Both written sets sort before ``80-tacet-wired.network``, so for the NICs they name they
win (networkd uses the first matching ``.network``). systemd-network-generator.service
also ran earlier in the boot (its ``.link`` files, which rename NICs, must exist before
udev sees them); its ``.network`` and ``.netdev`` files are removed here: the command
line must not apply when network_data.json does, refused input must not half-apply, and
their names depend on systemd's version (``90-*``, after the DHCP file, in systemd 252;
``70-*`` in 257).

Input that cannot be used is refused with one line on the console. Then the NICs stay
unconfigured (``10-tacet-no-network.network``) unless the kernel command line has
``tacet.network-fallback=dhcp``, which leaves them to DHCP.

Every outcome is also left in a small record for the agent (record.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import SETTINGS, TACET_PREFIX, cmdline_words
from wire.network_data import NetworkDataError, parse

from . import cmdline, record
from .collect import CollectError, Collector
from .render import NO_NETWORK, NO_NETWORK_FILE, PREFIX, render

NETWORK_DIR = Path("/run/systemd/network")
CMDLINE_PREFIX = "20-tacet-cmdline-"
FALLBACK_KEY = TACET_PREFIX + "network-fallback"
WAIT_KEY = TACET_PREFIX + "config-drive-wait"
# With ironic's boot_method=vmedia: how long to wait for the medium (config drive or not).
VMEDIA_WAIT = 30.0
EXIT_REFUSED = 1

Say = Callable[[str], None]


class Refused(Exception):
    """A configuration source exists and cannot be used; the message is one line."""


def config_drive_wait(words: list[str]) -> tuple[float, str | None]:
    """How long to wait for a config drive, and what was wrong with the asked-for value.

    ``tacet.config-drive-wait=SECONDS`` (at most 300); else, on ironic's virtual media
    boot (``boot_method=vmedia``), VMEDIA_WAIT: the medium may be the config drive and
    show up only once its driver is loaded; else none.
    """
    default = VMEDIA_WAIT if cmdline.value_of(words, "boot_method") == "vmedia" else 0.0
    seconds, problem = _setting(words, "config-drive-wait")
    return (default if seconds is None else seconds), problem


def _setting(words: list[str], name: str) -> tuple[Any, str | None]:
    """The ``tacet.NAME`` kernel parameter parsed as the agent's configuration parses it
    (agent/config.py), or None and why it was not taken."""
    raw = cmdline.value_of(words, TACET_PREFIX + name)
    if raw is None:
        return None, None
    try:
        return SETTINGS[name].parse(raw), None
    except ValueError as exc:
        return None, f"{TACET_PREFIX}{name}={raw}: {exc}; ignored"


def configure(
    collector: Collector,
    network_dir: Path = NETWORK_DIR,
    generator: Path = cmdline.GENERATOR,
    say: Say = print,
    record_file: Path | None = None,
) -> int:
    """Write the network configuration, and what it configured to ``record_file`` when
    given; 0, or EXIT_REFUSED when input was refused."""

    def leave(outcome: dict[str, Any]) -> None:
        if record_file is not None:
            record.write(outcome, record_file)

    words = cmdline_words(collector.cmdline())
    fallback, problem = _setting(words, "network-fallback")
    if problem:
        say(problem)
    fallback = fallback or "none"
    network_dir.mkdir(parents=True, exist_ok=True)
    _clear(network_dir, say)
    try:
        source, files = _choose(collector, words, generator, say)
    except Refused as exc:
        say(f"refused: {exc}")
        leave(record.unconfigured("refused"))
        if fallback == "dhcp":
            say(f"falling back to DHCP on every NIC ({FALLBACK_KEY}=dhcp)")
            return EXIT_REFUSED
        _write(network_dir, {NO_NETWORK_FILE: NO_NETWORK})
        say(
            "no network configured: the agent is unreachable until this is fixed"
            f" ({FALLBACK_KEY}=dhcp on the kernel command line allows DHCP instead)"
        )
        return EXIT_REFUSED
    if files is None:
        say("no network_data.json and no ip=/vlan=/bond= parameters: DHCP on every NIC")
        leave(record.unconfigured("dhcp"))
        return 0
    _write(network_dir, files)
    leave(record.from_networkd(files, source))
    say(f"wrote {', '.join(sorted(files))} to {network_dir}")
    return 0


def _choose(
    collector: Collector, words: list[str], generator: Path, say: Say
) -> tuple[str, dict[str, str] | None]:
    """The record's name for the source that won, and its networkd files (None: DHCP)."""
    try:
        found = collector.network_data()
    except CollectError as exc:
        raise Refused(str(exc)) from None
    parameters = cmdline.network_parameters(words)
    if found is not None:
        try:
            data = parse(found.text)
        except NetworkDataError as exc:
            raise Refused(f"network_data.json from {found.origin}: {exc}") from None
        for warning in data.warnings:
            say(f"network_data.json: {warning}")
        say(
            f"network from network_data.json in the {found.origin}: {len(data.links)} links,"
            f" {len(data.networks)} networks"
        )
        if parameters:
            say(f"ignored (network_data.json takes precedence): {' '.join(parameters)}")
        return "network_data", render(data)
    if parameters:
        try:
            options = cmdline.bond_options(parameters)
            generated = cmdline.generate(parameters, generator)
        except cmdline.CmdlineError as exc:
            raise Refused(f"kernel command line: {exc}") from None
        say(f"network from the kernel command line: {' '.join(parameters)}")
        return "cmdline", {
            CMDLINE_PREFIX + name: text
            for name, text in cmdline.add_bond_options(generated, options).items()
            if name.endswith((".network", ".netdev"))
        }
    return "dhcp", None


def _clear(network_dir: Path, say: Say) -> None:
    """Our files from an earlier run, and the early generator's .network/.netdev files."""
    for path in sorted(network_dir.iterdir()):
        if not path.is_file() or path.is_symlink():
            continue
        ours = path.name.startswith((PREFIX, CMDLINE_PREFIX))
        theirs = path.suffix in (".network", ".netdev") and _first_line(path) == (
            cmdline.GENERATOR_MARK
        )
        if ours or theirs:
            path.unlink()
            if theirs:
                say(f"removed systemd-network-generator's {path.name} (decided here instead)")


def _first_line(path: Path) -> str:
    try:
        with path.open(errors="replace") as file:
            return file.readline().rstrip("\n")
    except OSError:
        return ""


def _write(network_dir: Path, files: dict[str, str]) -> None:
    """Each file whole or not at all; world-readable, as networkd reads them unprivileged."""
    for name, text in files.items():
        temporary = network_dir / f".{name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.replace(temporary, network_dir / name)
