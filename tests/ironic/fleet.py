"""Many passive nodes at once under a real ironic: enrolled, deployed, their agents polled.

For the tests of several conductors (``test_cluster.py``) and the benchmarks of the
plugin's polling (``bench/ironic_poll.py``). Each node is enrolled on
``tacet-manual-management`` with ``tacet-pxe``/``tacet-passive``, its own MAC and its
agent's loopback address (``driver_info/tacet_address``), then deployed with an image
the :func:`stalling_app` server starts to send and never finishes: once its agent is
found, every node stays in ``wait call-back`` with a running ``write_image``, the
steady state of a fleet being written, polled at ``[tacet] poll_interval``.

The agents are real Tacet agents (``agent.daemon.AgentServer``), several hundred to a
process (``python -m tests.ironic.fleet --serve FIRST,COUNT --workdir DIR``), each with
the token ironic put in its node's PXE config (token-binding trust), a sparse file as
its disk and, when asked, its access log (``access-log``) written as JSON lines to
``DIR/access-FIRST.jsonl``: which agent, which conductor (the plugin's User-Agent), when.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .launcher import IronicApi, node_body

ROOT = Path(__file__).resolve().parent.parent.parent
INVENTORY = ROOT / "tests" / "fixtures" / "qemu-virtio" / "expected.json"
MIB = 1024 * 1024
AGENT_PORT = 9999
CONDUCTOR_IN_AGENT = " (ironic conductor "  # how the plugin's User-Agent names its host


def mac(i: int) -> str:
    return f"52:54:01:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def address(i: int) -> str:
    """Agent i's own loopback address (all of 127/8 is loopback), like one host per node:
    apart from bench/fleet.py's 127.1/16, so an agent another run left there is never
    one of these nodes' (the plugin would refuse it)."""
    return f"127.3.{i // 250}.{i % 250 + 1}"


def raise_open_files() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def conductor_of(user_agent: str) -> str | None:
    """The ironic conductor a plugin's User-Agent names, None for any other client."""
    _, found, rest = user_agent.partition(CONDUCTOR_IN_AGENT)
    return rest.rstrip(")") if found else None


# -- the image server ---------------------------------------------------------------------
IMAGE_BYTES = 64 * MIB
IMAGE_SHA256 = hashlib.sha256(bytes(IMAGE_BYTES)).hexdigest()  # the image: zeros


def stalling_app(release: threading.Event | None = None, trickle: float | None = None) -> Any:
    """Answers a deploy kernel and ramdisk nobody boots, and images (``IMAGE_BYTES`` of
    zeros) it starts to send and finishes only once ``release`` is set, if ever.

    ``trickle``: while held, one more KiB every this many seconds, so that a download
    held for longer than the agent's read timeout (60 s, retried a few times) is not
    given up: a bench's steady state of thousands of nodes lasts longer than that.
    """
    from aiohttp import web

    chunk = bytes(64 * 1024)
    drop = bytes(1024)

    async def serve_file(request: web.Request) -> web.StreamResponse:
        if request.match_info["name"] in ("deploy.kernel", "deploy.initramfs"):
            return web.Response(body=b"nobody boots this\n")
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(IMAGE_BYTES)})
        answer = web.StreamResponse(headers={"Content-Length": str(IMAGE_BYTES)})
        await answer.prepare(request)
        await answer.write(chunk)
        sent, last = len(chunk), time.monotonic()
        while release is None or not release.is_set():
            await asyncio.sleep(0.5)
            due = trickle is not None and time.monotonic() - last >= trickle
            if due and sent + len(drop) < IMAGE_BYTES:  # a trickle never finishes it
                await answer.write(drop)
                sent, last = sent + len(drop), time.monotonic()
        while sent < IMAGE_BYTES:
            piece = chunk[: IMAGE_BYTES - sent]
            await answer.write(piece)
            sent += len(piece)
        return answer

    app = web.Application()
    app.router.add_route("*", "/{name}", serve_file)
    return app


# -- the agents' side ---------------------------------------------------------------------
class _JsonLines(logging.Handler):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.out = path.open("a", buffering=1)

    def emit(self, record: logging.LogRecord) -> None:
        fields = ("peer", "local", "method", "path", "status", "user_agent")
        entry = {name: getattr(record, name, None) for name in fields}
        self.out.write(json.dumps({"time": record.created, **entry}) + "\n")


async def serve(first: int, count: int, workdir: Path, access_log: bool) -> None:
    """Agents first..first+count-1, each with its token from tokens.json and its own MAC."""
    from agent import daemon
    from agent.config import Config
    from agent.daemon import AgentServer
    from agent.power import RecordingPower

    daemon.WARMUP_DELAY = 0.0
    if access_log:
        logger = logging.getLogger("agent.access")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(_JsonLines(workdir / f"access-{first}.jsonl"))
    tokens = json.loads((workdir / "tokens.json").read_text())
    base_inventory = json.loads(INVENTORY.read_text())
    servers = []
    base = Path(tempfile.mkdtemp(prefix="agents-", dir=workdir))
    for i in range(first, first + count):
        inventory = json.loads(json.dumps(base_inventory))
        inventory["interfaces"] = [{**inventory["interfaces"][0], "mac_address": mac(i)}]
        disk = base / f"disk-{i}"  # sparse: the stalled download never fills it
        with disk.open("wb") as handle:
            handle.truncate(8 * 1024 * MIB)
        inventory["disks"] = [{**inventory["disks"][0], "name": str(disk), "size": 8 * 1024 * MIB}]
        config = Config(
            listen_host=address(i),
            listen_port=AGENT_PORT,
            state_dir=base / str(i),
            config_dir=base / "etc",
            agent_token=tokens[str(i)],
            # Its own self-signed certificate, as a booted ramdisk makes one, naming the
            # address the conductor connects to.
            advertise_host=address(i),
            access_log=access_log,
        )
        server = AgentServer(config, RecordingPower(), collect_inventory=lambda inv=inventory: inv)
        await server.start()
        servers.append(server)
    print(json.dumps(len(servers)), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for server in servers:
        await server.stop("finished")


# -- ironic's side ------------------------------------------------------------------------
def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(step)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")


def list_nodes(api: IronicApi, fields: str) -> list[dict[str, Any]]:
    """Every node with ``fields`` (uuid among them), page by page (ironic gives 1,000)."""
    found: list[dict[str, Any]] = []
    marker = ""
    while True:
        page = api.get(f"/v1/nodes?fields=uuid,{fields}&limit=1000{marker}")["nodes"]
        found += page
        if len(page) < 1000:
            return found
        marker = f"&marker={page[-1]['uuid']}"


def token_in(pxe_dirs: Iterable[Path], i: int) -> str:
    """The agent token ironic wrote into node i's PXE config, in whichever TFTP root
    (one per conductor) the node's conductor wrote it."""
    name = "01-" + mac(i).replace(":", "-")
    for tftp in pxe_dirs:
        config = tftp / "pxelinux.cfg" / name
        if config.is_file():
            return config.read_text().split("ipa-agent-token=")[1].split()[0]
    raise FileNotFoundError(f"no PXE config for node {i} ({name})")


@dataclass
class PassiveFleet:
    """``count`` passive nodes in the ironic at ``api_url``, and their agents."""

    api_url: str
    images_url: str  # the stalling_app server
    workdir: Path
    count: int
    workers: int = 1
    access_log: bool = False
    poll_timeout: float = 600.0
    redeploy_failed: bool = False
    uuids: list[str] = field(default_factory=list)
    redeployed: list[str] = field(default_factory=list)
    agents: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def api(self) -> IronicApi:
        return IronicApi(self.api_url)

    def node_body(self, i: int) -> dict[str, Any]:
        base = self.images_url
        return node_body(
            f"{base}/deploy.kernel",
            f"{base}/deploy.initramfs",
            instance_info={
                "image_source": f"{base}/image-{i}.raw",
                "image_os_hash_algo": "sha256",
                "image_os_hash_value": IMAGE_SHA256,
                "image_disk_format": "raw",
            },
            passive_address=f"{address(i)}:{AGENT_PORT}",
        )

    def states(self) -> dict[str, str]:
        listed = list_nodes(self.api, "provision_state")
        return {node["uuid"]: node["provision_state"] for node in listed}

    def all_in(self, state: str) -> bool:
        mine = self.states()
        return all(mine.get(uuid) == state for uuid in self.uuids)

    def enroll_and_deploy(self, extra: Callable[[int], dict[str, Any]] | None = None) -> None:
        """Enroll, manage, provide and deploy every node, until all wait for their agent."""
        api = self.api
        for i in range(self.count):
            body = self.node_body(i)
            body.update(extra(i) if extra else {})
            node = api.post("/v1/nodes", body)
            api.post("/v1/ports", {"node_uuid": node["uuid"], "address": mac(i)})
            self.uuids.append(node["uuid"])
        for step, state in (("manage", "manageable"), ("provide", "available")):
            for uuid in self.uuids:
                api.set_provision_state(uuid, step)
            wait_until(lambda s=state: self.all_in(s), self.poll_timeout, f"all nodes {state}")
        for uuid in self.uuids:
            api.set_provision_state(uuid, "active")
        wait_until(self._all_waiting, self.poll_timeout, "all nodes waiting")

    def _all_waiting(self) -> bool:
        """Whether every node waits for its agent; with ``redeploy_failed`` (benches), a
        deploy that failed is started again and counted in ``redeployed``: at thousands
        of deploys preparing at once, ironic's image cache can lose a race (the node
        fails with "No such file or directory" under tftp-master)."""
        mine = self.states()
        if self.redeploy_failed:
            for uuid in self.uuids:
                if mine.get(uuid) == "deploy failed":
                    self.redeployed.append(uuid)
                    self.api.set_provision_state(uuid, "active")
        return all(mine.get(uuid) == "wait call-back" for uuid in self.uuids)

    def start_agents(self, pxe_dirs: list[Path]) -> None:
        """Boot every node's agent, with the token from its PXE config."""
        tokens = {str(i): token_in(pxe_dirs, i) for i in range(self.count)}
        (self.workdir / "tokens.json").write_text(json.dumps(tokens))
        workers = range(self.workers)
        per = [self.count // self.workers + (i < self.count % self.workers) for i in workers]
        firsts = [sum(per[:i]) for i in range(len(per))]
        for first, count in zip(firsts, per, strict=True):
            if not count:
                continue
            argv = [sys.executable, "-m", "tests.ironic.fleet", "--serve", f"{first},{count}"]
            argv += ["--workdir", str(self.workdir)]
            if self.access_log:
                argv.append("--access-log")
            self.agents.append(
                subprocess.Popen(
                    argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
            )
        for process in self.agents:
            assert process.stdout is not None
            if not process.stdout.readline():
                raise RuntimeError(f"an agent worker exited with {process.wait()}")

    def contacted(self) -> int:
        """Nodes whose agent the plugin has found (its URL recorded, as a heartbeat would)."""
        listed = list_nodes(self.api, "driver_internal_info")
        return sum(
            1
            for node in listed
            if node["uuid"] in self.uuids and node["driver_internal_info"].get("agent_url")
        )

    def access_entries(self, since: float = 0.0) -> list[dict[str, Any]]:
        entries = []
        for path in sorted(self.workdir.glob("access-*.jsonl")):
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry["time"] >= since:
                    entries.append(entry)
        return entries

    def stop(self) -> None:
        for process in self.agents:
            if process.stdin is not None and not process.stdin.closed:
                process.stdin.close()
        for process in self.agents:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.agents.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description="agent worker of tests.ironic.fleet")
    parser.add_argument("--serve", required=True, help="FIRST,COUNT")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args()
    raise_open_files()
    first, count = (int(v) for v in args.serve.split(","))
    asyncio.run(serve(first, count, args.workdir, args.access_log))


if __name__ == "__main__":
    main()
