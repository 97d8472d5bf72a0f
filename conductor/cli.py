"""``tacet``: the operator's command line: talk to one agent, provision a fleet, PKI.

Errors are one line on stderr; the exit status says what kind (see EXIT_CODES). Nothing
secret is printed unless asked for (``--show-token``); secret files are written 0600.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from conductor import pki
from wire.files import write_private

from .client import (
    AgentClient,
    AgentError,
    Options,
    Trust,
    Unreachable,
    deadline_message,
    parse_pin,
    tune_gc_for_polling,
)

EXIT_ERROR = 2
PKI_ENV = "TACET_PKI"
EXIT_INTERRUPTED = 130
EXIT_CODES = """exit status:
  0  success (provision: every node done)
  1  the command failed on the agent, or the agent rejected the request
     (provision: a node failed or the run was interrupted)
  2  usage or local error (bad option, unreadable file)
  3  the agent is unreachable (provision: nodes unreachable, none failed)
  4  the agent's certificate did not verify, or it refused our token/certificate
  5  the agent is busy with another command
  6  the agent's answer is outside the protocol
  130 interrupted (Ctrl-C)"""

CONNECTION_HELP = """connection: HOST[:PORT], [IPV6][:PORT] or a bare IPV6 (default port 9999;
a port after an IPv6 address needs the brackets; a link-local one takes its zone:
[fe80::5%eth0]). Verify the agent one way:
  --pki DIR                  what tacet pki made in DIR: its CA, the conductor's client
                             certificate and, for commands that need one, the token of the
                             node whose certificate names HOST (default: $TACET_PKI)
  --cafile CA.pem            a CA (name checked) or the agent's own certificate (pinned)
  --pin sha256:HEX           the SHA-256 of the agent's certificate (as printed on its console)
  --token/--token-file only  the token binding: the agent proves it holds the token
  --trust-on-first-use       accept and print whatever certificate is served (explicit)
Explicit --cafile/--pin/--trust-on-first-use, --cert/--key and --token/--token-file win
over what --pki gives."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tacet",
        description="Tacet operator tools: talk to passive agents, provision a fleet, PKI.",
        epilog="examples:\n  tacet pki dev ./pki\n"
        "  tacet status 127.0.0.1 --pki pki\n"
        "  tacet inventory 127.0.0.1 --pki pki\n"
        "  tacet provision fleet.toml\n\n"
        "Run tacet COMMAND --help for each command's options.\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    pki_parser = commands.add_parser("pki", help="certificates and per-node secrets")
    actions = pki_parser.add_subparsers(dest="action", required=True, parser_class=_Parser)

    init = actions.add_parser("init", help="create a CA (EC P-256) in DIR")
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
        help="build a node's secrets initrd (gzip-compressed newc cpio for iPXE to append)",
        description="Issue a server certificate for NODE and pack it with its key, the client CA"
        " and an agent token as a gzip-compressed newc cpio initrd unpacking into /etc/tacet/. The"
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
    node.add_argument(
        "--network-data",
        type=Path,
        metavar="FILE",
        help="the node's network_data.json (OpenStack config-drive format, as in ironic's"
        " node network_data): checked, then put in the initrd for the ramdisk to configure"
        " its network without DHCP (see docs/networks.md)",
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
        " one by one. DIR/conductor.toml names the CA and the conductor certificate, so"
        " agent commands need only --pki DIR.",
    )
    dev.add_argument("dir", type=Path, metavar="DIR")
    dev.add_argument("--node", default="node-1", metavar="NAME", help="default: %(default)s")
    dev.add_argument(
        "--ip", action="append", default=None, metavar="IP", help="IP SANs (default: 127.0.0.1)"
    )
    dev.set_defaults(run=_dev)
    _agent_commands(commands)
    return parser


class _Help(argparse.RawDescriptionHelpFormatter):
    pass


ATTEMPT_TIMEOUT = 60.0  # one request and its answer, within the command's --timeout


def _connection(parser: argparse.ArgumentParser, timeout: float) -> None:
    parser.add_argument("host", metavar="HOST[:PORT]", help="the agent (default port 9999)")
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--pki",
        type=Path,
        metavar="DIR",
        default=os.environ.get(PKI_ENV) or None,
        help="use DIR/conductor.toml (CA, client certificate) and DIR's node tokens"
        f" (default: ${PKI_ENV})",
    )
    group.add_argument("--token", help="the agent token (prefer --token-file)")
    group.add_argument("--token-file", type=Path, metavar="FILE", help="file with the token")
    group.add_argument("--cafile", type=Path, metavar="FILE", help="CA or agent certificate")
    group.add_argument("--pin", metavar="sha256:HEX", help="the agent certificate's SHA-256")
    group.add_argument("--cert", type=Path, metavar="FILE", help="our client certificate")
    group.add_argument("--key", type=Path, metavar="FILE", help="its private key")
    group.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="accept the certificate served and print its fingerprint (weakest; explicit)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        metavar="S",
        help="for the whole command, retries and waits included (default: %(default)g s)",
    )
    group.add_argument("--retries", type=int, default=3, help="on connection errors (%(default)s)")


@dataclass(frozen=True)
class Argument:
    """One ``add_argument`` call, as data."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def argument(*flags: str, **options: Any) -> Argument:
    return Argument(flags, options)


@dataclass(frozen=True)
class AgentCommand:
    """A sub-command that talks to one agent: its parser and what it does, as data."""

    name: str
    help: str
    examples: tuple[str, ...]
    work: Callable[[AgentClient, argparse.Namespace], Awaitable[None]]
    arguments: tuple[Argument, ...] = ()
    needs_token: bool = True  # --pki then looks up the node's token
    timeout: float = 60.0  # the default --timeout: the whole command


def _agent_commands(commands: Any) -> None:
    for command in AGENT_COMMANDS:
        parser = commands.add_parser(
            command.name,
            help=command.help,
            description=f"{command.help[0].upper()}{command.help[1:]}.\n\n{CONNECTION_HELP}",
            epilog="examples:\n"
            + "\n".join(f"  {line}" for line in command.examples)
            + f"\n\n{EXIT_CODES}",
            formatter_class=_Help,
        )
        _connection(parser, command.timeout)
        for extra in command.arguments:
            parser.add_argument(*extra.flags, **extra.options)
        parser.set_defaults(run=_with_client(command.work), needs_token=command.needs_token)
    _provision_command(commands)


def _provision_command(commands: Any) -> None:
    provision = commands.add_parser(
        "provision",
        help="run the passive flow for every node of a fleet file",
        description="For each node, with at most CONCURRENCY in flight: wait until the agent"
        " answers, check it is the expected machine (MACs, serial, system UUID, disk"
        " serials), set its node_info, optionally erase disk metadata, write the image, read"
        " the partition UUIDs, then power off or reboot. Every node ends done, failed (with"
        " the step and the reason) or unreachable, in the results file (JSON, 0600). Ctrl-C"
        " stops cleanly; --resume skips the nodes already done. The file format is in"
        " docs/conductor.md.",
        epilog="examples:\n  tacet provision fleet.toml\n"
        "  tacet provision fleet.toml --results run1.json --resume --concurrency 200\n\n"
        + EXIT_CODES,
        formatter_class=_Help,
    )
    provision.add_argument("fleet", type=Path, metavar="FLEET.toml")
    provision.add_argument(
        "--results", type=Path, metavar="FILE", help="default: FLEET.results.json next to it"
    )
    provision.add_argument("--resume", action="store_true", help="skip nodes done before")
    provision.add_argument("--concurrency", type=int, metavar="N", help="override the file's")
    provision.add_argument("--plain", action="store_true", help="log lines, never bars")
    provision.set_defaults(run=_provision)


def _options(args: argparse.Namespace, host: str) -> Options:
    """The connection from the flags: explicit ones first, then what --pki gives; every
    file is read and checked here, so a bad one is a one-line error naming it."""
    cafile, cert, key, token_file = args.cafile, args.cert, args.key, args.token_file
    if args.pki is not None:
        profile = pki.load_profile(args.pki)
        if cafile is None and args.pin is None and not args.trust_on_first_use:
            cafile = profile.cafile
        if cert is None and key is None:
            cert, key = profile.cert, profile.key
        if args.needs_token and args.token is None and token_file is None:
            token_file = pki.node_token_file(args.pki, host)
    token = args.token
    if args.token is not None and args.token_file is not None:
        raise pki.PkiError("give --token or --token-file, not both")
    if token_file is not None:
        token = pki.read_token_file(token_file)
    if args.token:
        print(
            "tacet: warning: a token on the command line is visible to other users; "
            "prefer --token-file",
            file=sys.stderr,
        )
    try:
        pin = parse_pin(args.pin) if args.pin else None
    except ValueError as exc:
        raise pki.PkiError(str(exc)) from None
    if (cert is None) != (key is None):
        raise pki.PkiError("--cert and --key go together")
    if cafile is not None:
        pki.read_certificates(cafile)
    if cert is not None and key is not None:
        pki.check_client_pair(cert, key)
    trust = Trust(cafile, pin, args.trust_on_first_use, cert, key)
    if not args.timeout > 0:
        raise pki.PkiError("--timeout must be a positive number of seconds")
    if args.retries < 0:
        raise pki.PkiError("--retries must be 0 or more")
    return Options(
        trust,
        token or None,
        timeout=min(ATTEMPT_TIMEOUT, args.timeout),
        retries=args.retries,
        deadline=args.timeout,
    )


def _with_client(
    work: Callable[[AgentClient, argparse.Namespace], Awaitable[None]],
) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        from .fleet import agent_address

        try:
            host, _ = agent_address(args.host)
        except ValueError as exc:
            raise pki.PkiError(f"HOST: {exc}") from None
        options = _options(args, host)
        try:
            client = AgentClient(args.host, options)
        except ValueError as exc:
            raise pki.PkiError(str(exc)) from None

        async def go() -> None:
            async with client:
                try:
                    async with asyncio.timeout(args.timeout) as scope:
                        await work(client, args)
                except TimeoutError:
                    if not scope.expired():
                        raise
                    message = deadline_message(args.timeout, client.last_call, "--timeout")
                    raise Unreachable(message, client.address) from None
                if client.mode == "tofu" and client.seen_fingerprint:
                    print(
                        f"tacet: trusted on first use: certificate SHA-256 "
                        f"{client.seen_fingerprint}; pin it with --pin sha256:"
                        f"{client.seen_fingerprint.replace(':', '')}",
                        file=sys.stderr,
                    )

        asyncio.run(go())

    return run


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


async def _status_work(client: AgentClient, args: argparse.Namespace) -> None:
    from .progress import table

    status = await client.status()
    if args.json:
        _print_json(status.raw)
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.started_at))
    rows = [
        ("address", client.address),
        ("version", status.version),
        ("mode", status.mode),
        ("started", started),
        ("node uuid", status.node_uuid),
        ("certificate sha256", status.certificate_fingerprint),
        ("claimed by", status.claimed_by),
        ("token binding", "yes" if status.binding else "no"),
        ("rejections", json.dumps(status.raw.get("rejections") or {})),
    ]
    print(table(("agent", "value"), rows))


async def _inventory_work(client: AgentClient, args: argparse.Namespace) -> None:
    from .progress import inventory_text

    inventory = await client.get_hardware_info(refresh=args.refresh)
    if args.json:
        _print_json(inventory.raw)
    else:
        print(inventory_text(inventory.raw))


async def _node_info_work(client: AgentClient, args: argparse.Namespace) -> None:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except UnicodeDecodeError:
        raise pki.PkiError(f"{args.file}: not UTF-8 text") from None
    try:
        node_info = json.loads(text)
    except ValueError as exc:
        raise pki.PkiError(f"{args.file}: not JSON: {exc}") from None
    if not isinstance(node_info, dict):
        raise pki.PkiError(f"{args.file}: node_info must be a JSON object")
    _print_json(await client.set_node_info(node_info))


def _hint_value(text: str) -> Any:
    if text.isdigit():
        return int(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


async def _deploy_work(client: AgentClient, args: argparse.Namespace) -> None:
    from .fleet import image_spec
    from .progress import interactive

    try:
        image = image_spec(args.image, args.checksum, disk_format=args.disk_format)
    except ValueError as exc:
        raise pki.PkiError(str(exc)) from None
    hints = {}
    for hint in args.hint:
        key, equals, value = hint.partition("=")
        if not equals or not key:
            raise pki.PkiError(f"--hint {hint!r}: expected KEY=VALUE")
        hints[key.strip()] = _hint_value(value.strip())
    node = {"instance_info": {"root_device": hints}} if hints else None
    status = await client.status()
    info = image.image_info(status.node_uuid or "")
    started = time.monotonic()
    result = await client.write_image(info, node)
    print(f"{client.address}: writing {image.url} ({result.id})", file=sys.stderr)
    if interactive():
        from rich.console import Console

        with Console(stderr=True).status(f"writing {image.url} to {client.address}"):
            done = await client.wait(result, interval=args.interval)
    else:
        done = await client.wait(result, interval=args.interval)
    elapsed = time.monotonic() - started
    print(((done.command_result or {}).get("deploy_result") or {}).get("result", "written"))
    uuids = await client.get_partition_uuids()
    print(f"root uuid: {uuids.root_uuid} ({elapsed:.1f} s)")


async def _commands_work(client: AgentClient, args: argparse.Namespace) -> None:
    from .progress import table

    history = await client.list_commands()
    if args.json:
        _print_json([r.__dict__ for r in history])
        return
    rows = [
        (r.id, r.command_name, r.status, (r.command_error or {}).get("message")) for r in history
    ]
    print(table(("id", "command", "status", "error"), rows))


async def _logs_work(client: AgentClient, args: argparse.Namespace) -> None:
    data = await client.collect_system_logs()
    args.output.write_bytes(data)
    print(f"{args.output}: {len(data)} bytes")


async def _power_off_work(client: AgentClient, args: argparse.Namespace) -> None:
    result = await client.power_off()
    with contextlib.suppress(Unreachable):  # it went down before we read the result
        await client.wait(result, interval=1.0, deadline=120)
    print(f"{client.address}: powering off")


_JSON = argument("--json", action="store_true", help="print the raw JSON")

AGENT_COMMANDS: tuple[AgentCommand, ...] = (
    AgentCommand(
        "status",
        "show an agent's public status (version, mode, node, fingerprint, rejections)",
        (
            "tacet status 10.0.0.5 --pki pki",
            "tacet status 10.0.0.5 --cafile pki/ca.pem --cert C.pem --key K.pem --json",
            "tacet status 10.0.0.5 --pin sha256:3F1C...",
        ),
        _status_work,
        (_JSON,),
        needs_token=False,
    ),
    AgentCommand(
        "inventory",
        "show the hardware inventory as tables (system, NICs, disks)",
        (
            "tacet inventory 10.0.0.5 --pki pki",
            "tacet inventory node-1 --pki pki --json > node-1.json",
            "tacet inventory 10.0.0.5 --cafile pki/ca.pem --token-file pki/nodes/n1/token",
        ),
        _inventory_work,
        (
            argument("--json", action="store_true", help="print the raw inventory JSON"),
            argument("--refresh", action="store_true", help="collect it afresh"),
        ),
    ),
    AgentCommand(
        "node-info",
        "give the agent its node_info (poll.set_node_info) from a JSON file",
        (
            "tacet node-info 10.0.0.5 node.json --pki pki",
            """echo '{"node": {"uuid": "..."}, "config": {}}' | tacet node-info HOST - ...""",
        ),
        _node_info_work,
        (argument("file", metavar="FILE", help="JSON {node: ..., config: ...}; - = stdin"),),
    ),
    AgentCommand(
        "deploy",
        "write an image (deploy step write_image) and wait for it",
        (
            "tacet deploy 10.0.0.5 --pki pki \\",
            "    --image http://10.0.0.1/img/debian.raw --checksum sha256:9f86... --hint size=100",
            "tacet deploy 10.0.0.5 --pki pki --disk-format qcow2 \\",
            "    --image http://10.0.0.1/img/debian.qcow2 --checksum sha256:5e2b...",
        ),
        _deploy_work,
        (
            argument("--image", required=True, metavar="URL", help="http(s) URL of the image"),
            argument("--checksum", required=True, metavar="ALGO:HEX", help="sha256 or sha512"),
            argument(
                "--disk-format",
                choices=("raw", "qcow2"),
                default="raw",
                help="the image's format, checked by the agent (default: %(default)s)",
            ),
            argument(
                "--hint",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="a root-device hint (repeatable), e.g. serial=S3Z1 or size='>= 100'",
            ),
            argument("--interval", type=float, default=2.0, help="status poll interval, s"),
        ),
        timeout=3600.0,  # writing the image
    ),
    AgentCommand(
        "commands",
        "list the commands the agent ran, and their results",
        ("tacet commands 10.0.0.5 --pki pki",),
        _commands_work,
        (_JSON,),
    ),
    AgentCommand(
        "logs",
        "fetch the agent's log archive (tar.gz)",
        ("tacet logs 10.0.0.5 --pki pki -o node-1-logs.tar.gz",),
        _logs_work,
        (argument("-o", "--output", required=True, type=Path, metavar="FILE"),),
        timeout=180.0,  # the agent runs its log commands for up to 15 s each
    ),
    AgentCommand(
        "power-off",
        "sync and power the machine off",
        ("tacet power-off 10.0.0.5 --pki pki",),
        _power_off_work,
        timeout=180.0,  # up to 120 s of it waiting for the result
    ),
)


class _Outcome(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _provision(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from .fleet import exit_code, load_fleet, provision
    from .progress import interactive, reporter

    fleet = load_fleet(args.fleet)
    if args.concurrency is not None:
        if args.concurrency < 1:
            raise pki.PkiError("--concurrency must be at least 1")
        fleet = replace(fleet, settings=replace(fleet.settings, concurrency=args.concurrency))
    results = args.results or args.fleet.with_suffix(".results.json")
    if args.plain or not interactive():
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tune_gc_for_polling(len(fleet.nodes))
    nodes = asyncio.run(provision(fleet, results, args.resume, reporter(args.plain)))
    counts: dict[str, int] = {}
    for entry in nodes.values():
        counts[entry["state"]] = counts.get(entry["state"], 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    print(f"{summary} ({results})")
    raise _Outcome(exit_code(nodes))


def _init(args: argparse.Namespace) -> None:
    ca = pki.init_ca(args.dir, name=args.name, days=args.days)
    print(f"CA certificate: {ca.cert_path}")
    print(f"CA key: {ca.key_path}")
    print(f"CA SHA-256 fingerprint: {ca.fingerprint}")
    print(f"conductor profile: {pki.write_profile(args.dir)} (for tacet --pki {args.dir})")


def _issue_client(args: argparse.Namespace) -> None:
    client = pki.issue_client(args.dir, args.name, days=args.days)
    print(f"client: {args.name}")
    print(f"certificate: {client.cert_path}")
    print(f"key: {client.key_path}")
    print(f"certificate SHA-256 fingerprint: {client.fingerprint}")
    profile = args.dir / pki.PROFILE
    if pki.adopt_client(args.dir, args.name):
        print(f"conductor profile: {profile} now uses this client")
    else:
        print(f"conductor profile: {profile} keeps its client (edit it to switch)")


def _node_bundle(args: argparse.Namespace) -> None:
    token = None if args.token == "auto" else args.token
    network_data = None
    if args.network_data is not None:
        try:
            network_data = args.network_data.read_bytes()
        except OSError as exc:
            raise pki.PkiError(f"cannot read {args.network_data}: {exc.strerror or exc}") from None
        for warning in pki.check_network_data(network_data).warnings:
            print(f"tacet: warning: {args.network_data}: {warning}", file=sys.stderr)
    bundle = pki.node_bundle(
        args.dir, args.node, args.ip, token, days=args.days, network_data=network_data
    )
    output: Path = args.output
    # The initrd first: if keeping the record fails, no node gets secrets the conductor
    # does not know, and an older record stays intact when the initrd cannot be written.
    try:
        write_private(output, bundle.initrd(mtime=int(time.time())))
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
    if args.network_data is not None:
        print(f"network data: {args.network_data} (in the initrd as /etc/tacet/network_data.json)")
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
    first = (args.ip or ["127.0.0.1"])[0]
    print(f"next: start an agent from {output}, then: tacet status {first} --pki {args.dir}")


def main(argv: Sequence[str] | None = None) -> int:
    from .fleet import FleetError

    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except _Outcome as outcome:
        return outcome.code
    except KeyboardInterrupt:
        print("tacet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except AgentError as exc:
        print(f"tacet: {exc.kind}: {exc}", file=sys.stderr)
        return exc.exit_code
    except (pki.PkiError, FleetError) as exc:
        print(f"tacet: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"tacet: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
