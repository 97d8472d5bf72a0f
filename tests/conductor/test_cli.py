"""``tacet`` commands as an operator runs them (a subprocess) against real agents on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import sys
import tarfile
from pathlib import Path

import pytest

from conductor.cli import main
from tests.conductor.conftest import IMAGE, TOKEN
from tests.conductor.test_fleet import NodeInventory, mac, qcow2_server
from tests.ports import free_port

__all__ = ["qcow2_server"]  # a fixture

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
        "http://127.0.0.1/x",
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


def interruptible() -> None:
    """Ctrl-C's default in the child, as at a terminal: a test run started in the
    background by a shell without job control ignores SIGINT, and a child inherits that
    (Python then keeps it ignored, rightly for a background job)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
        preexec_fn=interruptible,
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


# -- plain help texts --------------------------------------------------------------------
def all_help_argvs() -> list[list[str]]:
    from conductor.cli import _parser

    argvs = [[]]
    commands = next(a for a in _parser()._actions if a.dest == "command")
    for name, sub in commands.choices.items():
        argvs.append([name])
        for action in sub._actions:
            if action.dest == "action":
                argvs += [[name, inner] for inner in action.choices]
    return argvs


@pytest.mark.parametrize("argv", all_help_argvs(), ids=lambda argv: " ".join(argv) or "tacet")
def test_help_texts_are_plain_text(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: tacet")
    for markup in ("``", ":func:", ":class:", ":meth:", "`"):
        assert markup not in text, (argv, markup)


# -- --pki: the files `tacet pki dev` leaves are all a command needs ------------------------
@pytest.fixture
async def dev_node(start_node, tmp_path):
    """dev_node(mutual) -> an agent set up from `tacet pki dev`'s bundle (node-1's
    certificate, key and token); ``mutual``: it requires the conductor's certificate."""
    from tests.conductor.test_pki import initrd_archive, unpack

    assert main(["pki", "dev", str(tmp_path / "pki")]) == 0
    unpack(initrd_archive(tmp_path / "pki" / "node-1.cpio"), tmp_path / "root")
    etc = tmp_path / "root" / "etc" / "tacet"

    async def start(mutual: bool = True):
        inventory = NodeInventory(tmp_path / "unused", mac(7), "SER7")
        started = await start_node(
            f"dev-{mutual}",
            inventory=inventory,
            cert_file=etc / "server-cert.pem",
            key_file=etc / "server-key.pem",
            client_ca_file=etc / "client-ca.pem" if mutual else None,
            agent_token=(etc / "token").read_text().strip(),
        )
        inventory.path = started.disk
        started.pki = str(tmp_path / "pki")
        return started

    return start


async def test_pki_gives_ca_and_client_certificate(dev_node, tmp_path):
    node = await dev_node(mutual=True)
    code, out, err = await tacet("status", node.address, "--pki", node.pki)
    assert code == 0, err
    assert node.agent.identity.fingerprint in out
    code, out, err = await tacet("inventory", node.address, "--pki", node.pki)
    assert code == 0, err
    assert "SER7" in out and mac(7) in out
    # Without the client certificate the agent refuses the handshake.
    code, _, err = await tacet(
        "status", node.address, "--cafile", f"{node.pki}/ca.pem", "--retries", "0"
    )
    assert code != 0
    # Explicit flags win over what --pki gives.
    code, _, err = await tacet(
        "status", node.address, "--pki", node.pki, "--pin", "sha256:" + "0" * 64
    )
    assert code == 4 and "does not match the pin" in err
    assert main(["pki", "dev", str(tmp_path / "other")]) == 0
    code, _, err = await tacet(
        "status", node.address, "--pki", node.pki, "--cafile", str(tmp_path / "other/ca.pem")
    )
    assert code == 4, err


async def test_pki_gives_the_token_of_the_node_that_names_the_host(dev_node, tmp_path):
    node = await dev_node(mutual=False)  # the token is the only credential it takes
    code, out, err = await tacet("inventory", node.address, "--pki", node.pki)
    assert code == 0, err
    assert "SER7" in out
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token-of-node-1\n")
    code, _, err = await tacet(
        "commands", node.address, "--pki", node.pki, "--token-file", str(wrong)
    )
    assert code == 4 and "Token invalid" in err


async def test_pki_from_the_environment(dev_node):
    node = await dev_node(mutual=True)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLI,
        "commands",
        node.address,
        cwd=ROOT,
        env={**os.environ, "TACET_PKI": node.pki},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert "COMMAND" in out.decode()


# -- user errors: one line, exit 2, the file named -----------------------------------------
def test_user_errors_are_one_line_with_exit_2(tmp_path, capsys):
    from tests.conductor.test_pki import assert_one_line_error, run_cli

    pki_dir = tmp_path / "pki"
    assert run_cli(capsys, "pki", "dev", pki_dir)[0] == 0
    ca, cert = pki_dir / "ca.pem", pki_dir / "clients" / "conductor.pem"
    key = pki_dir / "clients" / "conductor-key.pem"
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    missing = tmp_path / "missing.pem"
    zeros = "sha256:" + "0" * 64
    base = ["127.0.0.1", "--cafile", ca, "--cert", cert, "--key", key, "--retries", "0"]
    cases = [
        (["status", "not..an..addr", "--pki", pki_dir], "'not..an..addr' is neither an IP"),
        (["status", "127.0.0.1:0", "--pki", pki_dir], "port must be 1-65535"),
        (["status", "127.0.0.1", "--cafile", missing], f"{missing}: cannot read"),
        (["status", "127.0.0.1", "--cafile", tmp_path], f"{tmp_path}: cannot read"),
        (["status", "127.0.0.1", "--cafile", junk], f"{junk}: not a PEM certificate"),
        (["status", "127.0.0.1", "--cafile", ca, "--cert", junk, "--key", key], f"{junk}: not a"),
        (["status", "127.0.0.1", "--cafile", ca, "--cert", cert, "--key", junk], f"{junk}: not a"),
        (["status", "127.0.0.1", "--cafile", ca, "--cert", missing, "--key", key], str(missing)),
        (
            [
                "status",
                "127.0.0.1",
                "--cafile",
                ca,
                "--cert",
                cert,
                "--key",
                pki_dir / "ca-key.pem",
            ],
            f"{pki_dir / 'ca-key.pem'} is not the private key of {cert}",
        ),
        (["status", "127.0.0.1", "--cafile", ca, "--cert", cert], "--cert and --key go together"),
        (["status", "127.0.0.1", "--token-file", missing], f"{missing}: cannot read the token"),
        (["status", "127.0.0.1", "--token-file", binary], f"{binary}: the token must be"),
        (["status", "127.0.0.1", "--pki", tmp_path / "nothing"], "no such PKI directory"),
        (["status", "127.0.0.1", "--pki", tmp_path], f"{tmp_path / 'conductor.toml'}: cannot"),
        (
            ["deploy", *base, "--image", "ftp://example/x.img", "--checksum", zeros],
            "image URL 'ftp://example/x.img' is not an http(s) URL",
        ),
        (
            ["deploy", *base, "--image", "/srv/x.img", "--checksum", zeros],
            "is not an http(s) URL",
        ),
        (
            [
                "deploy",
                *base,
                "--image",
                "http://h/x",
                "--checksum",
                zeros,
                "--disk-format",
                "vmdk",
            ],
            "invalid choice: 'vmdk'",
        ),
        (["node-info", *base, binary], f"{binary}: not UTF-8 text"),
    ]
    for argv, text in cases:
        assert_one_line_error(*run_cli(capsys, *argv), text)
    (pki_dir / "conductor.toml").write_text('cafile = "ca.pem"\ncolour = "blue"\n')
    assert_one_line_error(
        *run_cli(capsys, "status", "127.0.0.1", "--pki", pki_dir), "unknown key 'colour'"
    )


# -- qcow2 ---------------------------------------------------------------------------------
async def test_deploy_qcow2(node, qcow2_server):
    base, digests = qcow2_server
    args = ["--hint", "serial=TEST0001", "--interval", "0.1"]
    # Raw bytes declared qcow2: the agent received disk_format and refused the mismatch.
    code, _, err = await tacet(
        "deploy", *node.args, *args, "--disk-format", "qcow2",
        "--image", f"{base}/image.raw", "--checksum", f"sha256:{digests['image.raw']}",
    )  # fmt: skip
    assert code == 1 and "disk_format qcow2 but the image is raw" in err
    with open(node.disk, "rb") as handle:
        assert handle.read(len(IMAGE)) == bytes(len(IMAGE))
    code, _, err = await tacet(
        "deploy", *node.args, *args, "--disk-format", "qcow2",
        "--image", f"{base}/image.qcow2", "--checksum", f"sha256:{digests['image.qcow2']}",
    )  # fmt: skip
    assert code == 0, err
    with open(node.disk, "rb") as handle:
        assert handle.read(len(IMAGE)) == IMAGE
