"""``tacet`` commands as an operator runs them (a subprocess) against real agents on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import signal
import sys
import tarfile
from pathlib import Path

import pytest

from conductor.cli import main
from tests.conductor.conftest import IMAGE, TOKEN
from tests.conductor.test_fleet import NodeInventory, free_port, mac

ROOT = Path(__file__).resolve().parent.parent.parent
CLI = "import sys; from conductor.cli import main; sys.exit(main(sys.argv[1:]))"


async def tacet(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLI,
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def node(start_node, test_pki, tmp_path):
    inventory = NodeInventory(tmp_path / "unused", mac(1), "SER1")
    started = await start_node(
        "cli", inventory=inventory, cert_file=test_pki.node_cert, key_file=test_pki.node_key
    )
    inventory.path = started.disk
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    started.args = [
        started.address,
        "--cafile",
        str(test_pki.ca_pem),
        "--token-file",
        str(token_file),
    ]
    return started


@pytest.mark.parametrize(
    "command",
    ["status", "inventory", "node-info", "deploy", "commands", "logs", "power-off", "provision"],
)
def test_help_everywhere_with_examples(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "exit status:" in text


async def test_status_and_inventory(node):
    code, out, _ = await tacet("status", *node.args)
    assert code == 0, out
    assert node.agent.identity.fingerprint in out and "passive" in out
    code, out, _ = await tacet("status", *node.args, "--json")
    assert json.loads(out)["certificate_fingerprint"] == node.agent.identity.fingerprint
    code, out, _ = await tacet("inventory", *node.args)
    assert code == 0
    assert "SER1" in out and mac(1) in out and str(node.disk) in out and "5.0 GiB" in out
    code, out, _ = await tacet("inventory", *node.args, "--json")
    assert json.loads(out)["system_vendor"]["serial_number"] == "SER1"


async def test_node_info_commands_logs_power_off(node, tmp_path):
    info = {"node": {"uuid": "11111111-2222-3333-4444-555555555555"}, "config": {}}
    code, out, _ = await tacet("node-info", *node.args, "-", stdin=json.dumps(info).encode())
    assert code == 0, out
    assert node.agent.node_uuid == info["node"]["uuid"]
    code, out, _ = await tacet("commands", *node.args)
    assert code == 0 and "set_node_info" in out and "SUCCEEDED" in out
    archive = tmp_path / "logs.tar.gz"
    code, out, _ = await tacet("logs", *node.args, "-o", str(archive))
    assert code == 0
    with tarfile.open(fileobj=io.BytesIO(archive.read_bytes())) as tar:
        assert "tacet-agent.log" in tar.getnames()
    code, out, _ = await tacet("power-off", *node.args)
    assert code == 0 and node.power.calls == ["power_off"]


async def test_deploy(node, image_server):
    digest = hashlib.sha256(IMAGE).hexdigest()
    args = ["--image", f"{image_server.base}/disk.img", "--hint", "serial=TEST0001"]
    code, out, err = await tacet(
        "deploy", *node.args, *args, "--checksum", f"sha256:{digest}", "--interval", "0.1"
    )
    assert code == 0, err
    assert "written to device" in out and "root uuid:" in out
    with open(node.disk, "rb") as handle:
        assert handle.read(len(IMAGE)) == IMAGE
    code, out, err = await tacet("deploy", *node.args, *args, "--checksum", "sha256:" + "0" * 64)
    assert code == 1 and "command failed" in err and "checksum" in err.lower()
    code, _, err = await tacet("deploy", *node.args, *args, "--checksum", "md5:00")
    assert code == 2 and "sha256" in err
    code, _, err = await tacet(
        "deploy",
        *node.args,
        "--image",
        "x",
        "--checksum",
        "sha256:" + "0" * 64,
        "--hint",
        "nothing",
    )
    assert code == 2 and "KEY=VALUE" in err


async def test_exit_codes_for_errors(node, tmp_path):
    code, _, err = await tacet(
        "status", f"127.0.0.1:{free_port()}", "--trust-on-first-use", "--retries", "0"
    )
    assert code == 3 and "unreachable" in err
    code, _, err = await tacet(
        "commands", node.address, "--pin", "sha256:" + "0" * 64, "--token", "x"
    )
    assert code == 4 and "does not match the pin" in err
    code, _, err = await tacet(
        "commands", node.address, "--cafile", node.args[2], "--token", "wrong"
    )
    assert code == 4 and "Token invalid" in err and "visible to other users" in err
    code, _, err = await tacet("commands", node.address)
    assert code == 2 and "no way to verify" in err
    code, _, err = await tacet("status", node.address, "--trust-on-first-use")
    assert code == 0 and node.agent.identity.fingerprint in err


def fleet_toml(
    path: Path, test_pki, nodes: list[dict[str, str]], image: dict[str, str] | None
) -> Path:
    lines = [
        "wait_interval = 0.1",
        "wait_deadline = 1.0",
        "poll_interval = 0.05",
        "retries = 0",
        "[defaults]",
        f'cafile = "{test_pki.ca_pem}"',
        f'token = "{TOKEN}"',
    ]
    if image:
        lines.append(f'image = {{ url = "{image["url"]}", checksum = "{image["checksum"]}" }}')
    for entry in nodes:
        lines.append("[[nodes]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in entry.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_provision(node, test_pki, image_server, tmp_path):
    image = {
        "url": f"{image_server.base}/disk.img",
        "checksum": "sha256:" + hashlib.sha256(IMAGE).hexdigest(),
    }
    fleet = fleet_toml(
        tmp_path / "fleet.toml",
        test_pki,
        [
            {"name": "good", "address": node.address, "macs": [mac(1)]},
            {"name": "gone", "address": f"127.0.0.1:{free_port()}"},
        ],
        image,
    )
    code, out, err = await tacet("provision", str(fleet))
    assert code == 3, err  # one done, one unreachable
    assert "1 done, 1 unreachable" in out
    results = json.loads((tmp_path / "fleet.results.json").read_text())["nodes"]
    assert results["good"]["state"] == "done" and results["gone"]["state"] == "unreachable"
    assert "good: [4/6] write_image" in err  # plain log lines when not a terminal
    code, out, err = await tacet("provision", str(fleet), "--resume")
    assert code == 3 and node.power.calls == ["power_off"]  # good was not run again


async def test_provision_ctrl_c(node, test_pki, image_server, tmp_path):
    image_server.hold = True
    image = {
        "url": f"{image_server.base}/disk.img",
        "checksum": "sha256:" + hashlib.sha256(IMAGE).hexdigest(),
    }
    fleet = fleet_toml(
        tmp_path / "f.toml", test_pki, [{"name": "n", "address": node.address}], image
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLI,
        "provision",
        str(fleet),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    for _ in range(200):
        await asyncio.sleep(0.05)
        if node.agent.executor.running():
            break
    process.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 130, err
    results = json.loads((tmp_path / "f.results.json").read_text())["nodes"]
    assert results["n"]["state"] == "interrupted" and results["n"]["step"] == "write_image"


async def test_bad_fleet_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[nodes]]\nname = 'x'\n")
    code, _, err = await tacet("provision", str(bad))
    assert code == 2 and "address" in err
