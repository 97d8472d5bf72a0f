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
import json
import logging
import random
import secrets
import time
import tomllib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

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
    describe,
    macs,
    parse_address,
    parse_pin,
    printable_token,
)

LOG = logging.getLogger(__name__)
RESULTS_VERSION = 1
DONE, FAILED, UNREACHABLE, INTERRUPTED = "done", "failed", "unreachable", "interrupted"
METHODS = ("write_image", "prepare_image")
FINISHES = ("power_off", "run_image", "none")
NODE_NAMESPACE = uuid.UUID("6f1c7d0e-5b9a-4f43-9d38-7c1a3d1e2b40")  # for default node UUIDs


class FleetError(ValueError):
    """The fleet file is wrong; the message names the node and the key."""


# -- the fleet file ----------------------------------------------------------------------
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


def image_spec(url: str, checksum: str, image_id: str | None = None) -> ImageSpec:
    algo, digest = parse_checksum(checksum)
    return ImageSpec(url, algo, digest, image_id or url.rstrip("/").rsplit("/", 1)[-1] or "image")


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


SETTING_KEYS = {f for f in Settings.__dataclass_fields__}
NODE_KEYS = {
    "name",
    "address",
    "port",
    "token",
    "token_file",
    "claim",
    "cafile",
    "pin",
    "trust_on_first_use",
    "cert",
    "key",
    "macs",
    "serial",
    "system_uuid",
    "disk_serials",
    "uuid",
    "properties",
    "root_device",
    "image",
    "method",
    "erase",
    "finish",
}


def _path(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise FleetError(f"{where}: must be a file path")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FleetError(f"{where}: must be a list of strings")
    return value


def _node(raw: dict[str, Any], base: Path, index: int) -> NodeSpec:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise FleetError(f"nodes[{index}]: every node needs a name")
    where = f"node {name}"
    unknown = sorted(set(raw) - NODE_KEYS)
    if unknown:
        raise FleetError(f"{where}: unknown key(s) {', '.join(unknown)}")
    address = raw.get("address")
    if not isinstance(address, str):
        raise FleetError(f"{where}: address (HOST or HOST:PORT) is required")
    try:
        host, port = parse_address(address, int(raw.get("port", 9999)))
    except ValueError as exc:
        raise FleetError(f"{where}: address: {exc}") from None
    token = raw.get("token")
    if "token_file" in raw:
        try:
            token = _path(base, raw["token_file"], f"{where}: token_file").read_text().strip()
        except OSError as exc:
            raise FleetError(f"{where}: token_file: {exc.strerror}") from None
    if token is not None and (not isinstance(token, str) or not token):
        raise FleetError(f"{where}: token must be a non-empty string")
    if token is not None and not printable_token(token):
        raise FleetError(f"{where}: token must be printable ASCII")
    try:
        trust = Trust(
            cafile=_path(base, raw["cafile"], f"{where}: cafile") if "cafile" in raw else None,
            pin=parse_pin(raw["pin"]) if "pin" in raw else None,
            trust_on_first_use=bool(raw.get("trust_on_first_use", False)),
            certfile=_path(base, raw["cert"], f"{where}: cert") if "cert" in raw else None,
            keyfile=_path(base, raw["key"], f"{where}: key") if "key" in raw else None,
        )
        claim = bool(raw.get("claim", False))
        # An agent being claimed has no pre-shared token, so no binding to check.
        trust.mode(None if claim else token)
    except (ValueError, OSError) as exc:
        raise FleetError(f"{where}: {exc}") from None
    if claim and token:
        raise FleetError(f"{where}: claim makes a fresh token; do not also give one")
    image = None
    if "image" in raw:
        spec = raw["image"]
        if not isinstance(spec, dict) or "url" not in spec or "checksum" not in spec:
            raise FleetError(f"{where}: image needs url and checksum (ALGO:HEX)")
        try:
            image = image_spec(str(spec["url"]), str(spec["checksum"]), spec.get("id"))
        except ValueError as exc:
            raise FleetError(f"{where}: image: {exc}") from None
    method = raw.get("method", "write_image")
    if method not in METHODS:
        raise FleetError(f"{where}: method must be one of {', '.join(METHODS)}")
    finish = raw.get("finish", "power_off")
    if finish not in FINISHES:
        raise FleetError(f"{where}: finish must be one of {', '.join(FINISHES)}")
    for key in ("properties", "root_device"):
        if key in raw and not isinstance(raw[key], dict):
            raise FleetError(f"{where}: {key} must be a table")
    node_uuid = raw.get("uuid") or str(uuid.uuid5(NODE_NAMESPACE, name))
    shown = f"[{host}]" if ":" in host else host
    return NodeSpec(
        name=name,
        address=f"{shown}:{port}",
        trust=trust,
        token=token,
        claim=claim,
        macs=macs(_strings(raw.get("macs", []), f"{where}: macs")),
        system_serial=raw.get("serial"),
        system_uuid=raw.get("system_uuid"),
        disk_serials=frozenset(_strings(raw.get("disk_serials", []), f"{where}: disk_serials")),
        node_uuid=str(node_uuid),
        properties=dict(raw.get("properties", {})),
        root_device=raw.get("root_device"),
        image=image,
        method=method,
        erase=bool(raw.get("erase", False)),
        finish=finish,
    )


def parse_fleet(data: dict[str, Any], base: Path) -> Fleet:
    """A fleet from the TOML's tables; relative paths are relative to ``base``."""
    top = {k: v for k, v in data.items() if k not in ("defaults", "nodes")}
    unknown = sorted(set(top) - SETTING_KEYS)
    if unknown:
        raise FleetError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(SETTING_KEYS))}"
        )
    try:
        settings = Settings(**top)
    except TypeError as exc:
        raise FleetError(str(exc)) from None
    if not isinstance(settings.concurrency, int) or settings.concurrency < 1:
        raise FleetError("concurrency must be a positive integer")
    defaults = data.get("defaults", {})
    nodes_raw = data.get("nodes", [])
    if not isinstance(defaults, dict) or not isinstance(nodes_raw, list) or not nodes_raw:
        raise FleetError("a fleet has a [defaults] table and at least one [[nodes]] entry")
    nodes = tuple(_node({**defaults, **raw}, base, i) for i, raw in enumerate(nodes_raw))
    names = [n.name for n in nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FleetError(f"node names must be unique: {', '.join(duplicates)}")
    return Fleet(settings, nodes)


def load_fleet(path: Path) -> Fleet:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise FleetError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise FleetError(f"{path}: not valid TOML: {exc}") from None
    return parse_fleet(data, path.parent)


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
    problems = []
    missing = sorted(spec.macs - inventory.macs)
    if missing:
        seen = ", ".join(sorted(inventory.macs)) or "none"
        problems.append(f"MAC(s) {', '.join(missing)} not present (seen: {seen})")
    if spec.system_serial and spec.system_serial != inventory.system_serial:
        problems.append(
            f"system serial is {inventory.system_serial!r}, expected {spec.system_serial!r}"
        )
    if spec.system_uuid and spec.system_uuid.lower() != str(inventory.system_uuid or "").lower():
        problems.append(f"system UUID is {inventory.system_uuid!r}, expected {spec.system_uuid!r}")
    missing_disks = sorted(spec.disk_serials - inventory.disk_serials)
    if missing_disks:
        problems.append(f"disk serial(s) {', '.join(missing_disks)} not present")
    return problems


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
                return await self.wait_client.status()
            except Unreachable as exc:  # anything else (untrusted...) ends the node
                last = exc.reason
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
