"""The tacet-agent command: start the agent (see --help)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path

from .config import (
    DEFAULT_CMDLINE,
    DEFAULT_CONFIG_DIR,
    DEFAULT_STATE_DIR,
    Config,
    ConfigError,
    load_config,
)

DESCRIPTION = (
    "Start the Tacet agent: one TLS listener that a conductor polls (passive mode), or"
    " lookup and heartbeats to ironic when an ironic API URL is configured (active mode)."
    " Settings come from the *.toml files of the configuration directory, then the"
    " kernel command line."
)
LOOP_FLAG = "--allow-loop-devices"


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tacet-agent", description=DESCRIPTION)
    parser.add_argument(
        "--cmdline-file",
        type=Path,
        default=DEFAULT_CMDLINE,
        help=f"kernel command line to read (default {DEFAULT_CMDLINE})",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--config-dir",
        type=Path,
        default=DEFAULT_CONFIG_DIR,
        help=f"directory of *.toml settings and per-node files (default {DEFAULT_CONFIG_DIR})",
    )
    source.add_argument(
        "--bundle",
        type=Path,
        metavar="FILE",
        help="run from a per-node bundle (the cpio that tacet pki node-bundle or tacet pki"
        " dev writes): its etc/tacet is unpacked into a private temporary directory,"
        " used as the configuration directory and removed when the agent stops",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"where identity and state survive restarts (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--power-backend",
        choices=("system", "recording"),
        default="system",
        help="recording: log power actions instead of doing them (development)",
    )
    parser.add_argument(
        LOOP_FLAG,
        action="store_true",
        help="list attached loop devices (those with a backing file) as disks and allow"
        " writing and erasing them, to try Tacet on a machine without a spare disk; the"
        " same as the setting allow-loop-devices (default: refused)",
    )
    parser.add_argument(
        "--wait-for-network",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before making a certificate (none configured) or looking up (active mode),"
        " wait up to SECONDS for a routable address; the ramdisk's unit starts the agent"
        " while DHCP is still running (default 0: no wait)",
    )
    return parser


def load(args: argparse.Namespace, config_dir: Path) -> Config:
    config = load_config(args.cmdline_file, config_dir, args.state_dir)
    if args.allow_loop_devices:
        origins = {**config.origins, "allow_loop_devices": LOOP_FLAG}
        config = replace(config, allow_loop_devices=True, origins=origins)
    return config


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.bundle is None:
        return start(args, args.config_dir)
    from .bundle import BundleError, unpacked

    try:
        with unpacked(args.bundle) as config_dir:
            return start(args, config_dir)
    except BundleError as exc:
        print(f"tacet-agent: configuration error: bundle {args.bundle}: {exc}", file=sys.stderr)
        return 2


def start(args: argparse.Namespace, config_dir: Path) -> int:
    try:
        config = load(args, config_dir)
    except ConfigError as exc:
        print(f"tacet-agent: configuration error: {exc}", file=sys.stderr)
        return 2
    return run(args, config)


def run(args: argparse.Namespace, config: Config) -> int:
    from .tls import lazy_system_trust

    with lazy_system_trust():
        from .daemon import configure_logging, serve
    from .power import RecordingPower, SystemPower

    configure_logging(config.debug)
    power = RecordingPower() if args.power_backend == "recording" else SystemPower()
    try:
        asyncio.run(serve(config, power=power, network_wait=args.wait_for_network))
    except ConfigError as exc:  # a setting that only the host can refute (listen-host)
        print(f"tacet-agent: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tacet-agent: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
