"""The passive flow for a fleet: wait for each agent, check it is the expected machine,
give it its node_info, write the image, then power off or reboot.

Many nodes run concurrently, at most ``concurrency`` at a time, over one connection
pool. Each node ends done, failed (with the step and the reason) or unreachable, and
the results file is rewritten as nodes progress, so ``resume`` skips finished nodes
after an interruption.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import re
import secrets
import time
import tomllib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from hardware.hints import HINT_TYPES, HintError, parse_hints
from wire.files import write_private

from .client import (
    RUNNING,
    SUCCEEDED,
    AgentClient,
    AgentError,
    CommandResult,
    Options,
    Pool,
    Trust,
    Unreachable,
    bracketed,
    describe,
    macs,
    parse_address,
    parse_pin,
    printable_token,
)
from .pki import (
    PkiError,
    check_client_pair,
    read_certificates,
    read_private_key,
    read_token_file,
)

LOG = logging.getLogger(__name__)
RESULTS_VERSION = 1
DONE, FAILED, UNREACHABLE, INTERRUPTED = "done", "failed", "unreachable", "interrupted"
METHODS = ("write_image", "prepare_image")
FINISHES = ("power_off", "run_image", "none")
NODE_NAMESPACE = uuid.UUID("6f1c7d0e-5b9a-4f43-9d38-7c1a3d1e2b40")  # for default node UUIDs


class FleetError(ValueError):
    """The fleet file is wrong; the message names the file, the table and the key."""


# -- addresses and images (shared with the command line) ---------------------------------
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
DISK_FORMATS = ("raw", "qcow2")


def agent_address(text: str, default_port: int = 9999) -> tuple[str, int]:
    """``HOST[:PORT]`` or ``[IPV6][:PORT]`` checked before any connection: an IP address
    (an IPv6 one possibly with a zone) or a DNS name."""
    host, port = parse_address(text, default_port)
    try:
        ipaddress.ip_address(host)
        return host, port
    except ValueError:
        pass
    try:
        ascii_name = host.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    labels = ascii_name.split(".")
    if not ascii_name or len(ascii_name) > 253 or not all(_LABEL.fullmatch(x) for x in labels):
        raise ValueError(f"{host!r} is neither an IP address nor a host name")
    return host, port


def check_image_url(url: str) -> str:
    """The agent downloads over http(s) only; anything else is refused here, not there."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"image URL {url!r} is not an http(s) URL")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port outside 0-65535
    except ValueError:
        raise ValueError(f"image URL {url!r} has an invalid port") from None
    return url


@dataclass(frozen=True)
class ImageSpec:
    url: str
    algo: str
    digest: str
    id: str
    disk_format: str = "raw"

    def image_info(self, node_uuid: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "urls": [self.url],
            "disk_format": self.disk_format,
            "os_hash_algo": self.algo,
            "os_hash_value": self.digest,
            "node_uuid": node_uuid,
        }


def parse_checksum(text: str) -> tuple[str, str]:
    """``ALGO:HEX`` (sha256 or sha512) -> (algo, lower-case hex)."""
    algo, colon, digest = text.partition(":")
    lengths = {"sha256": 64, "sha512": 128}
    algo = algo.lower()
    digest = digest.strip().lower()
    if (
        not colon
        or algo not in lengths
        or len(digest) != lengths[algo]
        or any(c not in "0123456789abcdef" for c in digest)
    ):
        raise ValueError("a checksum is sha256:<64 hex> or sha512:<128 hex>")
    return algo, digest


def image_spec(
    url: str, checksum: str, image_id: str | None = None, disk_format: str = "raw"
) -> ImageSpec:
    check_image_url(url)
    algo, digest = parse_checksum(checksum)
    if disk_format not in DISK_FORMATS:
        raise ValueError(f"disk_format must be one of {', '.join(DISK_FORMATS)}")
    name = image_id or url.rstrip("/").rsplit("/", 1)[-1] or "image"
    return ImageSpec(url, algo, digest, name, disk_format)


@dataclass(frozen=True)
class NodeSpec:
    name: str
    address: str
    trust: Trust
    token: str | None = field(default=None, repr=False)
    claim: bool = False  # give an unclaimed agent a fresh token in set_node_info
    macs: frozenset[str] = frozenset()
    system_serial: str | None = None
    system_uuid: str | None = None
    disk_serials: frozenset[str] = frozenset()
    node_uuid: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    root_device: dict[str, Any] | None = None
    image: ImageSpec | None = None
    method: str = "write_image"
    erase: bool = False
    finish: str = "power_off"

    def node(self) -> dict[str, Any]:
        """The lookup-shaped ``node`` of set_node_info (and of deploy steps)."""
        instance_info: dict[str, Any] = {}
        if self.root_device:
            instance_info["root_device"] = dict(self.root_device)
        if self.image is not None:
            instance_info["image_source"] = self.image.url
        return {
            "uuid": self.node_uuid,
            "name": self.name,
            "properties": dict(self.properties),
            "instance_info": instance_info,
        }


@dataclass(frozen=True)
class Settings:
    concurrency: int = 50
    wait_interval: float = 5.0  # between "is it up" attempts, jittered
    wait_deadline: float = 1800.0  # give up on a node that never answers
    poll_interval: float = 2.0  # between command status polls, jittered
    command_deadline: float = 3600.0  # for one async command
    timeout: float = 60.0
    retries: int = 3


@dataclass(frozen=True)
class Fleet:
    settings: Settings
    nodes: tuple[NodeSpec, ...]


# -- the fleet file: one table of keys per level -------------------------------------------
class _Nested(ValueError):
    """A key inside a nested table is wrong: its name joins the outer key's."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key


@dataclass
class _Reading:
    """What value parsers need: the directory paths are relative to, and a cache so a
    file named in [defaults] is read once, not once per node."""

    base: Path
    cache: dict[tuple[str, Path], Any] = field(default_factory=dict)

    def path(self, value: Any) -> Path:
        if not isinstance(value, str) or not value:
            raise ValueError("must be a file path")
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base / path

    def once(self, kind: str, path: Path, read: Callable[[Path], Any]) -> Any:
        if (kind, path) not in self.cache:
            try:
                self.cache[kind, path] = read(path)
            except PkiError as exc:
                raise ValueError(str(exc)) from None
        return self.cache[kind, path]


Parser = Callable[[Any, _Reading], Any]


@dataclass(frozen=True)
class Key:
    parse: Parser  # value -> checked value; ValueError says why
    help: str


def _integer(low: int) -> Parser:
    def parse(value: Any, _: _Reading) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"must be an integer of at least {low}")
        return value

    return parse


def _seconds(value: Any, _: _Reading) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError("must be a positive number of seconds")
    return float(value)


def _boolean(value: Any, _: _Reading) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _text(value: Any, _: _Reading) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value.strip()


def _one_of(*choices: str) -> Parser:
    def parse(value: Any, _: _Reading) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return str(value)

    return parse


def _strings(value: Any, _: _Reading) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of non-empty strings")
    return value


def _port(value: Any, reading: _Reading) -> int:
    port: int = _integer(1)(value, reading)
    if port > 65535:
        raise ValueError("must be a port number between 1 and 65535")
    return port


def _token(value: Any, reading: _Reading) -> str:
    token = _text(value, reading)
    if not printable_token(token):
        raise ValueError("must be printable ASCII")
    return token


def _token_file(value: Any, reading: _Reading) -> str:
    return str(reading.once("token", reading.path(value), read_token_file))


def _cafile(value: Any, reading: _Reading) -> Path:
    path = reading.path(value)
    reading.once("certificates", path, read_certificates)
    return path


def _cert(value: Any, reading: _Reading) -> Path:
    path = reading.path(value)
    reading.once("certificates", path, read_certificates)
    return path


def _key(value: Any, reading: _Reading) -> Path:
    path = reading.path(value)
    reading.once("key", path, read_private_key)
    return path


def _pin(value: Any, reading: _Reading) -> str:
    return parse_pin(_text(value, reading))


def _free_table(value: Any, _: _Reading) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("must be a table")
    return dict(value)


def _root_device(value: Any, reading: _Reading) -> dict[str, Any]:
    hints = _free_table(value, reading)
    for name in hints:
        if name not in HINT_TYPES:
            raise _Nested(name, f"unknown root device hint (known: {', '.join(HINT_TYPES)})")
    try:
        parse_hints(hints)
    except HintError as exc:
        raise ValueError(str(exc)) from None
    return hints


def _checksum(value: Any, reading: _Reading) -> tuple[str, str]:
    return parse_checksum(_text(value, reading))


def _url(value: Any, reading: _Reading) -> str:
    return check_image_url(_text(value, reading))


IMAGE_KEYS: dict[str, Key] = {
    "url": Key(_url, "http(s) URL of the image (required)"),
    "checksum": Key(_checksum, "sha256:HEX or sha512:HEX of the image as served (required)"),
    "id": Key(_text, "image id the agent logs (default: the URL's last part)"),
    "disk_format": Key(_one_of(*DISK_FORMATS), "raw (default) or qcow2"),
}


def _image(value: Any, reading: _Reading) -> ImageSpec:
    if not isinstance(value, dict):
        raise ValueError("must be a table {url = ..., checksum = ...}")
    image = _read_table(value, IMAGE_KEYS, reading)
    for required in ("url", "checksum"):
        if required not in image:
            raise _Nested(required, "is required")
    algo, digest = image["checksum"]
    url = image["url"]
    name = image.get("id") or url.rstrip("/").rsplit("/", 1)[-1] or "image"
    return ImageSpec(url, algo, digest, name, image.get("disk_format", "raw"))


SETTING_KEYS: dict[str, Key] = {
    "concurrency": Key(_integer(1), "nodes in flight"),
    "wait_interval": Key(_seconds, "s between 'is it up' attempts"),
    "wait_deadline": Key(_seconds, "s before a node is unreachable"),
    "poll_interval": Key(_seconds, "s between command result polls"),
    "command_deadline": Key(_seconds, "s for one command"),
    "timeout": Key(_seconds, "s per request"),
    "retries": Key(_integer(0), "on connection errors"),
}
NODE_KEYS: dict[str, Key] = {
    "name": Key(_text, "the node's name (required, unique)"),
    "address": Key(_text, "HOST, HOST:PORT, [IPV6] or [IPV6]:PORT (required)"),
    "port": Key(_port, "the port when the address has none (default 9999)"),
    "token": Key(_token, "the agent token (prefer token_file)"),
    "token_file": Key(_token_file, "file with the agent token"),
    "claim": Key(_boolean, "give an agent without a token a fresh one"),
    "cafile": Key(_cafile, "CA or the agent's own certificate"),
    "pin": Key(_pin, "sha256:HEX of the agent's certificate"),
    "trust_on_first_use": Key(_boolean, "accept and record the certificate served"),
    "cert": Key(_cert, "our client certificate"),
    "key": Key(_key, "its private key"),
    "macs": Key(_strings, "MACs the machine must have"),
    "serial": Key(_text, "expected system serial"),
    "system_uuid": Key(_text, "expected system UUID"),
    "disk_serials": Key(_strings, "disk serials the machine must have"),
    "uuid": Key(_text, "node UUID for node_info (default: derived from the name)"),
    "properties": Key(_free_table, "ironic node properties (free-form)"),
    "root_device": Key(_root_device, "root device hints"),
    "image": Key(_image, "the image table: url, checksum, id, disk_format"),
    "method": Key(_one_of(*METHODS), "write_image or prepare_image"),
    "erase": Key(_boolean, "erase_devices_metadata first"),
    "finish": Key(_one_of(*FINISHES), "power_off, run_image or none"),
}


def _read_table(raw: dict[str, Any], keys: dict[str, Key], reading: _Reading) -> dict[str, Any]:
    """Every key parsed by its table entry; unknown keys are refused (typos must not pass
    silently). Errors raise _Nested naming the key."""
    values = {}
    for name, value in raw.items():
        if name not in keys:
            raise _Nested(name, f"unknown key (known: {', '.join(keys)})")
        try:
            values[name] = keys[name].parse(value, reading)
        except _Nested as exc:
            raise _Nested(f"{name}.{exc.key}", str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise _Nested(name, str(exc)) from None
    return values


def _node(own: dict[str, Any], defaults: dict[str, Any], reading: _Reading, where: str) -> NodeSpec:
    """One [[nodes]] entry over the (already checked) [defaults]."""
    try:
        values = {**defaults, **_read_table(own, NODE_KEYS, reading)}
    except _Nested as exc:
        raise FleetError(f"{where} {exc.key}: {exc}") from None

    def fail(key: str, reason: str) -> FleetError:
        return FleetError(f"{where} {key}: {reason}")

    name = values.get("name")
    if name is None:
        raise fail("name", "every node needs a name")
    if "address" not in values:
        raise fail("address", "is required (HOST, HOST:PORT, [IPV6] or [IPV6]:PORT)")
    try:
        host, port = agent_address(values["address"], values.get("port", 9999))
    except ValueError as exc:
        raise fail("address", str(exc)) from None
    token = values.get("token_file", values.get("token"))
    claim = values.get("claim", False)
    trust = Trust(
        cafile=values.get("cafile"),
        pin=values.get("pin"),
        trust_on_first_use=values.get("trust_on_first_use", False),
        certfile=values.get("cert"),
        keyfile=values.get("key"),
    )
    if (trust.certfile is None) != (trust.keyfile is None):
        raise fail("cert", "cert and key go together")
    if trust.certfile is not None and trust.keyfile is not None:
        cert, key = trust.certfile, trust.keyfile
        try:
            reading.once(f"pair with {key}", cert, lambda _: check_client_pair(cert, key))
        except ValueError as exc:
            raise fail("key", str(exc)) from None
    try:
        # An agent being claimed has no pre-shared token, so no binding to check.
        trust.mode(None if claim else token)
    except (ValueError, OSError) as exc:
        raise fail("cafile", str(exc)) from None
    if claim and token:
        raise fail("claim", "claim makes a fresh token; do not also give one")
    return NodeSpec(
        name=name,
        address=bracketed(host, port),
        trust=trust,
        token=token,
        claim=claim,
        macs=macs(values.get("macs", [])),
        system_serial=values.get("serial"),
        system_uuid=values.get("system_uuid"),
        disk_serials=frozenset(values.get("disk_serials", [])),
        node_uuid=values.get("uuid") or str(uuid.uuid5(NODE_NAMESPACE, name)),
        properties=values.get("properties", {}),
        root_device=values.get("root_device"),
        image=values.get("image"),
        method=values.get("method", "write_image"),
        erase=values.get("erase", False),
        finish=values.get("finish", "power_off"),
    )


def parse_fleet(data: dict[str, Any], base: Path, source: str = "fleet file") -> Fleet:
    """A fleet from the TOML's tables; relative paths are relative to ``base``. Errors
    name ``source`` (the file), the table and the key."""
    reading = _Reading(base)
    top = {k: v for k, v in data.items() if k not in ("defaults", "nodes")}
    try:
        settings = Settings(**_read_table(top, SETTING_KEYS, reading))
    except _Nested as exc:
        raise FleetError(f"{source}: top level {exc.key}: {exc}") from None
    defaults_raw = data.get("defaults", {})
    nodes_raw = data.get("nodes", [])
    if not isinstance(defaults_raw, dict):
        raise FleetError(f"{source}: [defaults] must be a table")
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise FleetError(f"{source}: [[nodes]]: a fleet needs at least one [[nodes]] entry")
    try:
        defaults = _read_table(defaults_raw, NODE_KEYS, reading)
    except _Nested as exc:
        raise FleetError(f"{source}: [defaults] {exc.key}: {exc}") from None
    nodes = []
    for index, raw in enumerate(nodes_raw):
        if not isinstance(raw, dict):
            raise FleetError(f"{source}: [[nodes]] #{index + 1}: must be a table")
        name = raw.get("name")
        label = f"{name!r}" if isinstance(name, str) and name else f"#{index + 1}"
        nodes.append(_node(raw, defaults, reading, f"{source}: [[nodes]] {label}"))
    names = [n.name for n in nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FleetError(f"{source}: [[nodes]] name: must be unique: {', '.join(duplicates)}")
    return Fleet(settings, tuple(nodes))


def load_fleet(path: Path) -> Fleet:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise FleetError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise FleetError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise FleetError(f"{path}: not valid TOML: {exc}") from None
    return parse_fleet(data, path.parent, str(path))


# -- results -----------------------------------------------------------------------------
class Results:
    """The results file: one entry per node, rewritten atomically (0600: it may hold the
    tokens given to claimed agents) at most every ``min_interval`` seconds."""

    def __init__(self, path: Path, resume: bool, min_interval: float = 0.5) -> None:
        self.path = path
        self.min_interval = min_interval
        self.nodes: dict[str, dict[str, Any]] = {}
        self.saved_at = 0.0
        self.pending: asyncio.TimerHandle | None = None
        if resume and path.exists():
            try:
                data = json.loads(path.read_text())
                self.nodes = dict(data["nodes"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise FleetError(f"{path}: cannot resume from it: {exc}") from None

    def get(self, name: str) -> dict[str, Any]:
        return self.nodes.setdefault(name, {})

    def save(self, force: bool = False) -> None:
        """Write now, or (when written less than ``min_interval`` ago) soon: the file is
        never more than that behind, and a fleet of thousands is not rewritten per event."""
        now = time.monotonic()
        if not force and now - self.saved_at < self.min_interval:
            if self.pending is None:
                delay = self.min_interval - (now - self.saved_at)
                self.pending = asyncio.get_running_loop().call_later(delay, self.save, True)
            return
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        document = {"version": RESULTS_VERSION, "updated_at": time.time(), "nodes": self.nodes}
        write_private(self.path, json.dumps(document, indent=1, sort_keys=True).encode() + b"\n")
        self.saved_at = now


# -- progress ----------------------------------------------------------------------------
class Reporter(Protocol):
    def begin(self, total: int, skipped: int) -> None: ...

    def step(self, node: str, step: str, number: int, steps: int) -> None: ...

    def end_node(self, node: str, state: str, reason: str | None) -> None: ...

    def finish(self) -> None: ...


class LogReporter:
    """Plain log lines (no terminal, or ``--plain``)."""

    def begin(self, total: int, skipped: int) -> None:
        LOG.info("provisioning %d node(s), %d already done", total, skipped)

    def step(self, node: str, step: str, number: int, steps: int) -> None:
        LOG.info("%s: [%d/%d] %s", node, number, steps, step)

    def end_node(self, node: str, state: str, reason: str | None) -> None:
        level = logging.INFO if state == DONE else logging.WARNING
        LOG.log(level, "%s: %s%s", node, state, f": {reason}" if reason else "")

    def finish(self) -> None:
        pass


# -- the flow ----------------------------------------------------------------------------
class NodeFailed(Exception):
    def __init__(self, state: str, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


def steps_of(spec: NodeSpec) -> list[str]:
    steps = ["wait for the agent", "identify", "set node info"]
    if spec.erase:
        steps.append("erase_devices_metadata")
    if spec.image is not None:
        steps += [spec.method, "get_partition_uuids"]
    if spec.finish != "none":
        steps.append(spec.finish)
    return steps


def identity_differences(spec: NodeSpec, inventory: Any) -> list[str]:
    """What the agent's inventory says that does not fit the expected node."""
    differences: list[str] = inventory.differences(
        spec.macs, spec.system_serial, spec.system_uuid, spec.disk_serials
    )
    return differences


class NodeRun:
    """One node through the flow; records progress in its results entry."""

    def __init__(
        self,
        spec: NodeSpec,
        settings: Settings,
        pool: Pool,
        entry: dict[str, Any],
        reporter: Reporter,
        save: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.entry = entry
        self.reporter = reporter
        self.save = save
        self.steps = steps_of(spec)
        trust, token = spec.trust, spec.token
        if spec.claim:
            # A claim token survives in the results so a resumed run can talk to the
            # agent it already claimed.
            token = entry.get("claim_token") or secrets.token_urlsafe(32)
            entry["claim_token"] = token
        if trust.trust_on_first_use and entry.get("fingerprint"):
            # Seen on a first use before: from now on it is a pin.
            pin = str(entry["fingerprint"]).replace(":", "").lower()
            trust = replace(trust, trust_on_first_use=False, pin=pin)
        options = Options(trust, token, timeout=settings.timeout, retries=settings.retries)
        self.client = AgentClient(spec.address, options, pool=pool)
        self.wait_client = AgentClient(spec.address, replace(options, retries=0), pool=pool)

    def begin_step(self, step: str) -> None:
        self.entry["step"] = step
        self.reporter.step(self.spec.name, step, self.steps.index(step) + 1, len(self.steps))
        self.save()

    async def run(self) -> None:
        spec = self.spec
        self.entry.update(state="running", reason=None, started_at=time.time())
        self.entry.pop("finished_at", None)
        try:
            await self._flow()
        except NodeFailed as exc:
            self._end(exc.state, exc.reason)
        except Unreachable as exc:
            self._end(UNREACHABLE, exc.reason)
        except AgentError as exc:
            self._end(FAILED, describe(exc).replace(f"{spec.address}: ", ""))
        except asyncio.CancelledError:
            self._end(INTERRUPTED, "interrupted (Ctrl-C)")
            raise
        except Exception as exc:  # a bug: still one node's failure, not the fleet's
            LOG.exception("%s: unexpected error", spec.name)
            self._end(FAILED, f"unexpected error: {type(exc).__name__}: {exc}")

    def _end(self, state: str, reason: str | None) -> None:
        self.entry.update(state=state, reason=reason, finished_at=time.time())
        self.reporter.end_node(self.spec.name, state, reason)
        self.save()

    async def _flow(self) -> None:
        spec, client = self.spec, self.client
        self.begin_step("wait for the agent")
        status = await self._wait_until_up()
        if self.wait_client.seen_fingerprint:
            self.entry["fingerprint"] = self.wait_client.seen_fingerprint
        client.context = self.wait_client.context  # verified once; reuse it
        attached = await self._attach(status)
        # A resumed run whose command still runs (or finished) on the agent continues
        # from that step: the agent holds our node_info, so it was identified before.
        skip = self.steps.index(self.entry["step"]) if attached is not None else 0

        def due(step: str) -> bool:
            return self.steps.index(step) >= skip

        if due("identify"):
            self.begin_step("identify")
            inventory = await client.get_hardware_info()
            problems = identity_differences(spec, inventory)
            if problems:
                raise NodeFailed(FAILED, "not the expected node: " + "; ".join(problems))

        if due("set node info"):
            self.begin_step("set node info")
            node_info: dict[str, Any] = {"node": spec.node(), "config": {}}
            if spec.claim:
                node_info["config"]["agent_token"] = client.options.token
            await client.set_node_info(node_info)
            self.entry["node_uuid"] = spec.node_uuid

        if spec.erase and due("erase_devices_metadata"):
            self.begin_step("erase_devices_metadata")
            await self._command(lambda: client.erase_devices_metadata(spec.node()), attached)
            attached = None
        if spec.image is not None:
            info = spec.image.image_info(spec.node_uuid)
            if due(spec.method):
                self.begin_step(spec.method)
                if spec.method == "write_image":
                    start = lambda: client.write_image(info, spec.node())  # noqa: E731
                else:
                    start = lambda: client.prepare_image(info)  # noqa: E731
                await self._command(start, attached)
                attached = None
            self.begin_step("get_partition_uuids")
            uuids = await client.get_partition_uuids()
            self.entry["root_uuid"] = uuids.root_uuid
            self.entry["partitions"] = uuids.partitions
        if spec.finish != "none":
            self.begin_step(spec.finish)
            power = client.power_off if spec.finish == "power_off" else client.run_image
            # Unreachable here: the machine went down as asked before we saw the result.
            with contextlib.suppress(Unreachable):
                await self._command(power, attached)
        self._end(DONE, None)

    async def _attach(self, status: Any) -> CommandResult | None:
        """The command an interrupted run left on this agent, when it is ours."""
        command_id = self.entry.get("command_id")
        if not command_id or status.node_uuid != self.spec.node_uuid:
            return None
        if self.entry.get("command_step") not in self.steps:
            return None
        for result in await self.client.list_commands():
            if result.id == command_id and result.status in (RUNNING, SUCCEEDED):
                LOG.info("%s: continuing with %s, left running", self.spec.name, result.id)
                self.entry["step"] = self.entry["command_step"]
                return result
        return None

    async def _wait_until_up(self) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.wait_deadline
        while True:
            try:
                async with asyncio.timeout_at(deadline):  # the request under way too
                    return await self.wait_client.status()
            except Unreachable as exc:  # anything else (untrusted...) ends the node
                last = exc.reason
            except TimeoutError:
                last = "the last status request was unanswered"
            if loop.time() >= deadline:
                raise NodeFailed(
                    UNREACHABLE,
                    f"no answer within {self.settings.wait_deadline:g} s (last: {last})",
                )
            pause = self.settings.wait_interval * random.uniform(0.75, 1.25)
            await asyncio.sleep(max(0.0, min(pause, deadline - loop.time())))

    async def _command(
        self,
        start: Callable[[], Awaitable[CommandResult]],
        attached: CommandResult | None = None,
    ) -> CommandResult:
        """Start an async command (or take the one left running) and wait for it."""
        result = attached if attached is not None else await start()
        self.entry.update(command_id=result.id, command_step=self.entry["step"])
        self.save()
        return await self.client.wait(
            result,
            interval=self.settings.poll_interval,
            deadline=self.settings.command_deadline,
        )


async def provision(
    fleet: Fleet,
    results_path: Path,
    resume: bool = False,
    reporter: Reporter | None = None,
    pool: Pool | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the flow for every node (skipping those done before when ``resume``).

    Returns the results entries by node name; they are also in ``results_path``.
    Cancelling (Ctrl-C) marks the nodes in flight interrupted and saves the file.
    """
    reporter = reporter or LogReporter()
    results = Results(results_path, resume)
    own_pool = pool is None
    pool = pool or Pool()
    todo = [n for n in fleet.nodes if results.get(n.name).get("state") != DONE]
    reporter.begin(len(fleet.nodes), len(fleet.nodes) - len(todo))
    gate = asyncio.Semaphore(fleet.settings.concurrency)

    async def one(spec: NodeSpec) -> None:
        entry = results.get(spec.name)
        entry.update(state="pending", address=spec.address)
        async with gate:
            await NodeRun(spec, fleet.settings, pool, entry, reporter, results.save).run()

    try:
        async with asyncio.TaskGroup() as group:
            for spec in todo:
                group.create_task(one(spec))
    finally:
        for spec in todo:
            entry = results.get(spec.name)
            if entry.get("state") in ("pending", "running"):
                entry.update(state=INTERRUPTED, reason="not started (interrupted)")
        results.save(force=True)
        reporter.finish()
        if own_pool:
            await pool.close()
    return results.nodes


def exit_code(nodes: dict[str, dict[str, Any]]) -> int:
    """0 all done, 1 a node failed, 3 nodes unreachable (and none failed)."""
    states = {entry.get("state") for entry in nodes.values()}
    if FAILED in states or INTERRUPTED in states:
        return 1
    if UNREACHABLE in states:
        return 3
    return 0
