"""The real tacet-agent process: passive mode proof, SIGTERM, kill and restart safety."""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import psutil

from tests.agent.conftest import start
from tests.local_agent import agent_argv
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
NODE_INFO = {
    "node": {"uuid": "5a0b4ef2-9c8e-4d61-a3f7-2c1e0d9b8a77"},
    "config": {"agent_token": "claimed-token-xyz"},
}


class AgentProcess:
    def __init__(self, tmp: Path, port: int, extra: str = "") -> None:
        self.tmp, self.port = tmp, port
        (tmp / "cmdline").write_text(
            f"BOOT_IMAGE=/vmlinuz ipa-listen-host=127.0.0.1 tacet.listen-port={port} quiet{extra}\n"
        )
        (tmp / "etc").mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            agent_argv(tmp),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.banner = self.process.stdout.readline()
        match = re.search(r"certificate-sha256=([0-9A-F:]+)", self.banner)
        assert match, f"no banner: {self.banner!r} {self.process.stderr.read()[:2000]}"
        self.fingerprint = match.group(1)
        pem = (tmp / "state" / "agent-cert.pem").read_text()
        self.context = ssl.create_default_context(cadata=pem)

    def request(self, method: str, path: str, body=None, token: str | None = None):
        url = f"https://127.0.0.1:{self.port}{path}"
        if token:
            url += ("&" if "?" in url else "?") + f"agent_token={token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def command(self, name: str, params=None, token: str | None = None):
        return self.request("POST", "/v1/commands/", {"name": name, "params": params or {}}, token)

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        self.process.send_signal(signum)
        out, _err = self.process.communicate(timeout=30)
        return self.process.returncode, out


def connections(pid: int) -> list:
    process = psutil.Process(pid)
    getter = getattr(process, "net_connections", None) or process.connections
    return getter(kind="inet")


def test_passive_agent_opens_no_outbound_connection(tmp_path):
    port = free_port()
    agent = AgentProcess(tmp_path, port)
    seen = []
    try:
        assert "mode=passive" in agent.banner
        steps = [
            ("poll.get_hardware_info", {}, None),
            ("poll.set_node_info", {"node_info": NODE_INFO}, None),
            ("poll.get_node_info", {}, "claimed-token-xyz"),
            ("poll.get_hardware_info", {"refresh": True}, "claimed-token-xyz"),
            ("standby.sync", {}, "claimed-token-xyz"),
            ("clean.get_clean_steps", {"node": {}, "ports": []}, "claimed-token-xyz"),
            ("log.collect_system_logs", {}, "claimed-token-xyz"),
        ]
        for name, params, token in steps:
            status, result = agent.command(name, params, token)
            assert status == 200 and result["command_status"] == "SUCCEEDED", (name, result)
            seen.extend(connections(agent.process.pid))
        time.sleep(0.5)
        seen.extend(connections(agent.process.pid))
    finally:
        code, out = agent.stop()
    assert seen, "psutil saw no sockets at all"
    for conn in seen:
        # Only the listener and connections accepted on it: local port is always ours.
        assert conn.laddr.port == port, conn
        if conn.status == psutil.CONN_LISTEN:
            continue
        assert conn.raddr and conn.raddr.ip == "127.0.0.1", conn
    assert code == 0 and "stopped" in out


def test_restart_keeps_identity_claim_and_node_info(tmp_path):
    port = free_port()
    first = AgentProcess(tmp_path, port)
    try:
        _, status1 = first.request("GET", "/v1/status")
        status, _ = first.command("poll.set_node_info", {"node_info": NODE_INFO})
        assert status == 200
    finally:
        code, _ = first.stop(signal.SIGKILL)  # a crash, not a clean stop
    assert code == -signal.SIGKILL
    second = AgentProcess(tmp_path, port)
    try:
        assert second.fingerprint == first.fingerprint
        _, status2 = second.request("GET", "/v1/status")
        assert status2["certificate_fingerprint"] == status1["certificate_fingerprint"]
        assert status2["started_at"] > status1["started_at"]
        assert status2["node_uuid"] == NODE_INFO["node"]["uuid"]
        # the claim survived: nobody else can claim, and the old token still works
        other = {"node_info": {"config": {"agent_token": "attacker"}}}
        status, _ = second.command("poll.set_node_info", other)
        assert status == 401
        status, result = second.command("poll.get_node_info", token="claimed-token-xyz")
        assert status == 200 and result["command_result"]["node"] == NODE_INFO["node"]
    finally:
        code, _out = second.stop()
    assert code == 0
    state = tmp_path / "state"
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    assert oct((state / "agent-key.pem").stat().st_mode & 0o777) == "0o600"
    assert "claimed-token-xyz" not in (state / "state.json").read_text()  # stored as a hash


class InspectionEndpoint(http.server.BaseHTTPRequestHandler):
    """ironic's continue_inspection on loopback, answering as its base API version."""

    posts: ClassVar[list[dict]] = []

    def do_POST(self) -> None:  # the name http.server calls
        length = int(self.headers["Content-Length"])
        type(self).posts.append(json.loads(self.rfile.read(length)))
        body = json.dumps({"uuid": NODE_INFO["node"]["uuid"]}).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_the_real_process_posts_this_machines_inventory(tmp_path):
    """From the kernel parameter ironic sets to ironic's endpoint: the live inventory of
    the test machine, JSON as ironic reads it, then the agent keeps serving."""
    InspectionEndpoint.posts = []
    ironic = http.server.ThreadingHTTPServer(("127.0.0.1", 0), InspectionEndpoint)
    threading.Thread(target=ironic.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{ironic.server_port}/v1/continue_inspection"
    port = free_port()
    extra = f" ipa-inspection-callback-url={url} ipa-inspection-collectors=default"
    agent = AgentProcess(tmp_path, port, extra)
    try:
        assert "mode=inspection" in agent.banner and agent.banner.strip().endswith(url)
        line = agent.process.stdout.readline()
        assert "inspection data accepted" in line and NODE_INFO["node"]["uuid"] in line
        status, _ = agent.request("GET", "/v1/status")
        assert status == 200
    finally:
        agent.stop()
        ironic.shutdown()
    (posted,) = InspectionEndpoint.posts
    assert posted["configuration"]["collectors"] == ["default"]
    assert posted["error"] is None and "logs" not in posted
    assert posted["inventory"]["cpu"]["architecture"]
    assert all(i["mac_address"] for i in posted["inventory"]["interfaces"])


def test_invalid_configuration_stops_the_start(tmp_path):
    (tmp_path / "cmdline").write_text("ipa-listen-port=99999\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "--cmdline-file",
            str(tmp_path / "cmdline"),
            "--config-dir",
            str(tmp_path / "etc"),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "ipa-listen-port=99999 (kernel command line)" in done.stderr


async def test_stop_fails_a_running_command_with_the_reason(tmp_path):
    run = await start(tmp_path / "state")
    try:

        async def forever() -> None:
            await asyncio.Event().wait()

        run.agent.registry.add("test", "forever", forever, is_async=True, params={})
        _, result = await run.post({"name": "test.forever"})
        assert result["command_status"] == "RUNNING"
        await run.server.agent.executor.stop("agent stopping (SIGTERM)")
        stored = run.agent.executor.get(result["id"]).serialize()
        assert stored["command_status"] == "FAILED"
        assert "agent stopping (SIGTERM)" in stored["command_error"]["message"]
    finally:
        await run.client.close()
        await run.server.stop()
