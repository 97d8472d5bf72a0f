"""One ironic conductor polling N passive agents through Tacet's plugin: its CPU and memory.

A real ironic (the all-in-one process of tests/ironic/launcher.py, from
``tools/setup-ironic``, with the plugin, ``[api] enable_ramdisk_endpoints = False`` and
``[tacet] poll_interval``) and N real Tacet agents on loopback addresses, several
hundred to a process as in bench/fleet.py. Each node is enrolled on
``tacet-manual-management`` with ``tacet-pxe``/``tacet-passive`` and its agent's
address, and deployed; every agent starts with the token ironic put in its PXE config
(token-binding trust) and its own MAC. The image server answers and then stalls every
download, so after first contact every node stays in ``wait call-back`` with a running
``write_image``: each sweep is then, per node, one status poll by the plugin and one
heartbeat's worth of ironic (its lock, a database write, a command-status request).

Figures: ironic's RSS idle (started, no node), with N nodes polled, and the CPU seconds
of ironic's processes per sweep (over --sweeps sweeps), as a share of one core.
Goal: 1,000 nodes polled every 10 s cost less than 25 % of one core and < 100 MiB over
an idle ironic. Run it alone on the machine:

    .venv/bin/python bench/ironic_poll.py [--sizes 100,1000] [--interval 10] [--sweeps 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import fleet  # noqa: E402

MIB = 1024 * 1024


def mac(i: int) -> str:
    return f"52:54:01:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


# -- agent workers --------------------------------------------------------------------------
async def serve(first: int, count: int, workdir: Path) -> None:
    """Agents first..first+count-1, each with its token from tokens.json and its own MAC."""
    from agent import daemon
    from agent.config import Config
    from agent.daemon import AgentServer
    from agent.power import RecordingPower

    daemon.WARMUP_DELAY = 0.0
    tokens = json.loads((workdir / "tokens.json").read_text())
    base_inventory = json.loads(fleet.FIXTURE.read_text())
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
            listen_host=fleet.address(i),
            listen_port=9999,
            state_dir=base / str(i),
            config_dir=base / "etc",
            agent_token=tokens[str(i)],
            # Its own self-signed certificate, as a booted ramdisk makes one, naming the
            # address the conductor connects to.
            advertise_host=fleet.address(i),
        )
        server = AgentServer(config, RecordingPower(), collect_inventory=lambda inv=inventory: inv)
        await server.start()
        servers.append(server)
    print(json.dumps(len(servers)), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for server in servers:
        await server.stop("bench finished")


# -- ironic's side ----------------------------------------------------------------------------
def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants (ironic's all-in-one command forks workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rpartition(")")[2].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def rss_of(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1])
        except OSError:
            continue
    return total * os.sysconf("SC_PAGE_SIZE") / MIB


def stalling_app() -> Any:
    from aiohttp import web

    async def serve_file(request: web.Request) -> web.StreamResponse:
        size = 64 * MIB
        if request.match_info["name"] in ("deploy.kernel", "deploy.initramfs"):
            return web.Response(body=b"nobody boots this\n")
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(size)})
        answer = web.StreamResponse(headers={"Content-Length": str(size)})
        await answer.prepare(request)
        await answer.write(bytes(64 * 1024))
        while True:
            await asyncio.sleep(3600)

    app = web.Application()
    app.router.add_route("*", "/{name}", serve_file)
    return app


def wait_until(check: Any, timeout: float, what: str) -> None:
    print(f"bench: waiting for {what}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(2)
    raise SystemExit(f"bench: {what} did not happen within {timeout:.0f} s")


def run_size(n: int, interval: int, sweeps: int, workers: int, workdir: Path) -> dict[str, Any]:
    from tests.e2e.harness import BackgroundApp
    from tests.ironic.launcher import IronicApi, IronicService, locate_ironic
    from tests.ironic.passive import PASSIVE_OVERRIDES

    overrides = {key: dict(value) for key, value in PASSIVE_OVERRIDES.items()}
    overrides["tacet"] = {"poll_interval": str(interval), "poll_timeout": "10"}
    overrides["conductor"] = {"deploy_callback_timeout": "3600", "workers_pool_size": "400"}
    overrides["api"]["ramdisk_heartbeat_timeout"] = "600"
    ironic = IronicService(locate_ironic(), workdir / f"ironic-{n}", overrides=overrides)
    agents: list[subprocess.Popen[str]] = []
    with BackgroundApp(stalling_app()) as images:
        try:
            ironic.start()
            assert ironic.process is not None
            time.sleep(5)
            idle_rss = rss_of(tree_pids(ironic.process.pid))
            api = IronicApi(ironic.url)
            base = f"http://127.0.0.1:{images.port}"
            uuids = []
            for i in range(n):
                node = api.post(
                    "/v1/nodes",
                    {
                        "driver": "tacet-manual-management",
                        "boot_interface": "tacet-pxe",
                        "deploy_interface": "tacet-passive",
                        "power_interface": "fake",
                        "management_interface": "noop",
                        "network_interface": "noop",
                        "automated_clean": False,
                        "driver_info": {
                            "deploy_kernel": f"{base}/deploy.kernel",
                            "deploy_ramdisk": f"{base}/deploy.initramfs",
                            "tacet_address": f"{fleet.address(i)}:9999",
                        },
                        "instance_info": {
                            "image_source": f"{base}/image-{i}.raw",
                            "image_os_hash_algo": "sha256",
                            "image_os_hash_value": "0" * 64,
                            "image_disk_format": "raw",
                        },
                        "properties": {"cpu_arch": "x86_64", "capabilities": "boot_mode:bios"},
                    },
                )
                api.post("/v1/ports", {"node_uuid": node["uuid"], "address": mac(i)})
                uuids.append(node["uuid"])
            for uuid in uuids:
                api.set_provision_state(uuid, "manage")

            def all_in(state: str) -> bool:
                listed = api.get("/v1/nodes?fields=uuid,provision_state&limit=1000")["nodes"]
                return sum(1 for x in listed if x["provision_state"] == state) == n

            wait_until(lambda: all_in("manageable"), 600, f"{n} nodes manageable")
            for uuid in uuids:
                api.set_provision_state(uuid, "provide")
            wait_until(lambda: all_in("available"), 600, f"{n} nodes available")
            for uuid in uuids:
                api.set_provision_state(uuid, "active")
            wait_until(lambda: all_in("wait call-back"), 1200, f"{n} nodes in wait call-back")

            tokens = {}
            for i in range(n):
                config = (
                    ironic.workdir / "tftp" / "pxelinux.cfg" / ("01-" + mac(i).replace(":", "-"))
                )
                tokens[str(i)] = config.read_text().split("ipa-agent-token=")[1].split()[0]
            (workdir / "tokens.json").write_text(json.dumps(tokens))
            per = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
            firsts = [sum(per[:i]) for i in range(len(per))]
            me = [sys.executable, str(Path(__file__).resolve())]
            for first, count in zip(firsts, per, strict=True):
                if count:
                    agents.append(
                        subprocess.Popen(
                            [*me, "--serve", f"{first},{count}", "--workdir", str(workdir)],
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            text=True,
                        )
                    )
            for process in agents:
                assert process.stdout is not None
                process.stdout.readline()

            def all_contacted() -> bool:
                listed = api.get("/v1/nodes?fields=uuid,driver_internal_info&limit=1000")["nodes"]
                return sum(1 for x in listed if x["driver_internal_info"].get("agent_url")) == n

            began = time.monotonic()
            wait_until(all_contacted, 1200, f"first contact with {n} agents")
            first_contact_s = time.monotonic() - began
            time.sleep(interval * 2)  # the write_image commands started, steady state
            pids = tree_pids(ironic.process.pid)
            cpu_before = fleet.process_cpu_seconds(pids)
            time.sleep(interval * sweeps)
            cpu = fleet.process_cpu_seconds(pids) - cpu_before
            polled_rss = rss_of(pids)
            still = api.get("/v1/nodes?fields=uuid,provision_state&limit=1000")["nodes"]
            waiting = sum(1 for x in still if x["provision_state"] == "wait call-back")
            return {
                "idle_rss_mib": idle_rss,
                "polled_rss_mib": polled_rss,
                "cpu_per_sweep_s": cpu / sweeps,
                "core_share": cpu / (interval * sweeps),
                "first_contact_s": first_contact_s,
                "waiting": waiting,
            }
        finally:
            for process in agents:
                assert process.stdin is not None
                process.stdin.close()
            for process in agents:
                process.wait(timeout=120)
            ironic.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--interval", type=int, default=10, help="[tacet] poll_interval")
    parser.add_argument("--sweeps", type=int, default=6, help="sweeps measured")
    parser.add_argument("--workers", type=int, default=2, help="agent processes")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    fleet.raise_open_files()
    if args.serve is not None:
        first, count = (int(v) for v in args.serve.split(","))
        asyncio.run(serve(first, count, args.workdir))
        return
    workdir = Path(tempfile.mkdtemp(prefix="tacet-ironic-poll-"))
    try:
        sizes = [int(v) for v in args.sizes.split(",")]
        print(f"poll interval {args.interval} s; CPU over {args.sweeps} sweeps after first contact")
        print(
            f"{'nodes':>6} {'first contact s':>15} {'cpu s/sweep':>11} {'core %':>7} "
            f"{'idle RSS MiB':>12} {'polled RSS MiB':>14} {'growth MiB':>10} {'waiting':>7}"
        )
        for n in sizes:
            r = run_size(n, args.interval, args.sweeps, args.workers, workdir)
            print(
                f"{n:>6} {r['first_contact_s']:>15.1f} {r['cpu_per_sweep_s']:>11.2f} "
                f"{100 * r['core_share']:>6.1f}% {r['idle_rss_mib']:>12.1f} "
                f"{r['polled_rss_mib']:>14.1f} {r['polled_rss_mib'] - r['idle_rss_mib']:>10.1f} "
                f"{r['waiting']:>7}",
                flush=True,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
