"""``tacet``: the operator's command line (``tacet pki ...``).

Errors are one line on stderr and exit status 2. Nothing secret is printed unless
asked for (``--show-token``); secret files are written 0600.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from agent.tls import write_private
from conductor import pki

EXIT_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tacet", description="Tacet operator tools.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    pki_parser = commands.add_parser("pki", help="certificates and per-node secrets")
    actions = pki_parser.add_subparsers(dest="action", required=True, parser_class=_Parser)

    init = actions.add_parser("init", help="create a CA (EC P-384) in DIR")
    init.add_argument("dir", type=Path, metavar="DIR")
    init.add_argument("--name", default="Tacet CA", help="CA common name (default: %(default)s)")
    init.add_argument("--days", type=int, default=3650, help="validity (default: %(default)s)")
    init.set_defaults(run=_init)

    client = actions.add_parser("issue-client", help="issue a conductor client certificate")
    client.add_argument("dir", type=Path, metavar="DIR")
    client.add_argument("name", metavar="NAME")
    client.add_argument("--days", type=int, default=825, help="validity (default: %(default)s)")
    client.set_defaults(run=_issue_client)

    node = actions.add_parser(
        "node-bundle",
        help="build a node's secrets initrd (newc cpio for iPXE to append)",
        description="Issue a server certificate for NODE and pack it with its key, the client CA"
        " and an agent token as a newc cpio initrd unpacking into /etc/tacet/. The"
        " certificate and token are kept in DIR/nodes/NODE/.",
    )
    node.add_argument("dir", type=Path, metavar="DIR")
    node.add_argument("--node", required=True, metavar="NAME", help="node name (CN and DNS SAN)")
    node.add_argument(
        "--ip", action="append", default=[], metavar="IP", help="an IP SAN (repeatable)"
    )
    node.add_argument(
        "--token",
        default="auto",
        metavar="auto|VALUE",
        help="agent token; 'auto' (default) makes a fresh 256-bit one",
    )
    node.add_argument("--show-token", action="store_true", help="also print the token")
    node.add_argument("--days", type=int, default=825, help="validity (default: %(default)s)")
    node.add_argument("-o", "--output", required=True, type=Path, metavar="FILE")
    node.set_defaults(run=_node_bundle)

    dev = actions.add_parser(
        "dev",
        help="one step for a development setup: CA, a conductor certificate, one node bundle",
        description="init + issue-client conductor + node-bundle, with DIR/NODE.cpio as the"
        " initrd. The same files and modes as the three commands; for real fleets run them"
        " one by one.",
    )
    dev.add_argument("dir", type=Path, metavar="DIR")
    dev.add_argument("--node", default="node-1", metavar="NAME", help="default: %(default)s")
    dev.add_argument(
        "--ip", action="append", default=None, metavar="IP", help="IP SANs (default: 127.0.0.1)"
    )
    dev.set_defaults(run=_dev)
    return parser


def _init(args: argparse.Namespace) -> None:
    ca = pki.init_ca(args.dir, name=args.name, days=args.days)
    print(f"CA certificate: {ca.cert_path}")
    print(f"CA key: {ca.key_path}")
    print(f"CA SHA-256 fingerprint: {ca.fingerprint}")


def _issue_client(args: argparse.Namespace) -> None:
    client = pki.issue_client(args.dir, args.name, days=args.days)
    print(f"client: {args.name}")
    print(f"certificate: {client.cert_path}")
    print(f"key: {client.key_path}")
    print(f"certificate SHA-256 fingerprint: {client.fingerprint}")


def _node_bundle(args: argparse.Namespace) -> None:
    token = None if args.token == "auto" else args.token
    bundle = pki.node_bundle(args.dir, args.node, args.ip, token, days=args.days)
    output: Path = args.output
    # The initrd first: if keeping the record fails, no node gets secrets the conductor
    # does not know, and an older record stays intact when the initrd cannot be written.
    try:
        write_private(output, bundle.cpio(mtime=int(time.time())))
    except OSError as exc:
        raise pki.PkiError(f"cannot write {output}: {exc.strerror or exc}") from None
    try:
        record = pki.save_node(args.dir, bundle)
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    print(f"node: {bundle.node}")
    print(f"initrd: {output}")
    print(f"server certificate: {record.cert_path}")
    print(f"server certificate SHA-256 fingerprint: {bundle.fingerprint}")
    print(f"token file: {record.token_path}")
    if args.show_token:
        print(f"token: {bundle.token}")


def _dev(args: argparse.Namespace) -> None:
    base = [str(args.dir)]
    _init(_parser().parse_args(["pki", "init", *base]))
    _issue_client(_parser().parse_args(["pki", "issue-client", *base, "conductor"]))
    ips = [part for ip in args.ip or ["127.0.0.1"] for part in ("--ip", ip)]
    output = str(args.dir / f"{args.node}.cpio")
    _node_bundle(
        _parser().parse_args(["pki", "node-bundle", *base, "--node", args.node, *ips, "-o", output])
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except pki.PkiError as exc:
        print(f"tacet: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"tacet: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
