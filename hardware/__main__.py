"""``python -m hardware``: print this machine's inventory as JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .inventory import collect_inventory
from .sources import fixture_sources, live_sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hardware", description=__doc__)
    parser.add_argument(
        "--fixture", type=Path, help="replay a directory recorded by record-fixture instead"
    )
    parser.add_argument(
        "--lldp",
        type=float,
        metavar="SECONDS",
        help="listen this long for LLDP frames on physical NICs (needs root)",
    )
    parser.add_argument("--debug", action="store_true", help="log collector details to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    if args.fixture is not None and not args.fixture.is_dir():
        parser.error(f"--fixture {args.fixture}: not a directory")
    sources = fixture_sources(args.fixture) if args.fixture else live_sources()
    if args.lldp is not None and not 0 < args.lldp <= 300:
        parser.error(f"--lldp {args.lldp}: must be between 0 and 300 seconds")
    inventory = collect_inventory(sources, lldp_timeout=args.lldp)
    json.dump(inventory.to_dict(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
