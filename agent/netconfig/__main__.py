"""``tacet-network``: the ramdisk's boot step that configures the network (see boot.py).

Run by tacet-network.service before systemd-networkd; everything it decides goes to
stdout, which the unit sends to the journal and the console. Exit status 0: configured,
or left to DHCP; 1: input refused (the console says why); 2: usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.config import DEFAULT_STATE_DIR, cmdline_words

from . import boot, cmdline, collect, record


def _say(line: str) -> None:
    print(f"tacet-network: {line}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tacet-network",
        description="Write the ramdisk's systemd-networkd configuration from network_data.json"
        " (node bundle, then config drive), else the kernel command line, else leave DHCP.",
    )
    parser.add_argument("--network-dir", type=Path, default=boot.NETWORK_DIR)
    parser.add_argument("--bundle-file", type=Path, default=collect.BUNDLE_FILE)
    parser.add_argument("--cmdline", type=Path, default=collect.CMDLINE, metavar="FILE")
    parser.add_argument("--by-label", type=Path, default=collect.BY_LABEL, metavar="DIR")
    parser.add_argument("--generator", type=Path, default=cmdline.GENERATOR)
    parser.add_argument(
        "--record",
        type=Path,
        default=record.record_file(DEFAULT_STATE_DIR),
        metavar="FILE",
        help="where to leave what was configured, for the agent",
    )
    args = parser.parse_args(argv)
    collector = collect.Collector(
        bundle_file=args.bundle_file, by_label=args.by_label, cmdline=args.cmdline
    )
    try:
        words = cmdline_words(collector.cmdline())
    except OSError as exc:
        _say(f"cannot read {args.cmdline}: {exc.strerror or exc}")
        return boot.EXIT_REFUSED
    collector.wait_seconds, problem = boot.config_drive_wait(words)
    if problem:
        _say(problem)
    return boot.configure(collector, args.network_dir, args.generator, _say, args.record)


if __name__ == "__main__":
    sys.exit(main())
