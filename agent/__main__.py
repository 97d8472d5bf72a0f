"""``tacet-agent``: start the agent (see ``--help``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .config import DEFAULT_CMDLINE, DEFAULT_CONFIG_DIR, DEFAULT_STATE_DIR, ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tacet-agent", description=__doc__)
    parser.add_argument(
        "--cmdline-file",
        type=Path,
        default=DEFAULT_CMDLINE,
        help=f"kernel command line to read (default {DEFAULT_CMDLINE})",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=DEFAULT_CONFIG_DIR,
        help=f"directory of *.toml settings (default {DEFAULT_CONFIG_DIR})",
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
        "--wait-for-network",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before making a certificate (none configured) or looking up (active mode),"
        " wait up to SECONDS for a routable address; the ramdisk's unit starts the agent"
        " while DHCP is still running (default 0: no wait)",
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.cmdline_file, args.config_dir, args.state_dir)
    except ConfigError as exc:
        print(f"tacet-agent: configuration error: {exc}", file=sys.stderr)
        return 2
    from .tls import lazy_system_trust

    with lazy_system_trust():
        from .daemon import configure_logging, serve
    from .power import RecordingPower, SystemPower

    configure_logging(config.debug)
    power = RecordingPower() if args.power_backend == "recording" else SystemPower()
    try:
        asyncio.run(serve(config, power=power, network_wait=args.wait_for_network))
    except OSError as exc:
        print(f"tacet-agent: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
