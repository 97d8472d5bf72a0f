"""The passive flow for a fleet against several real agents on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import stat
import subprocess

import pytest

from conductor.fleet import (
    FleetError,
    exit_code,
    load_fleet,
    parse_fleet,
    provision,
)
from tests.conductor.conftest import IMAGE, TOKEN
from tests.image.test_prepare_image import DiskInventory
from tests.ports import free_port


class NodeInventory(DiskInventory):
    """A node with one NIC and a system serial, and a file as its disk."""

    def __init__(self, path, mac, serial):
        super().__init__(path)
        self.mac, self.serial = mac, serial

    def __call__(self):
        data = super().__call__()
        data["interfaces"] = [{"name": "eth0", "mac_address": self.mac}]
        data["system_vendor"] = {"serial_number": self.serial, "uuid": None}
        return data


@pytest.fixture
async def qcow2_server(aiohttp_server, tmp_path):
    """IMAGE as a qcow2 (made by qemu-img) and as raw bytes, on loopback."""
    from aiohttp import web

    raw, qcow2 = tmp_path / "image.raw", tmp_path / "image.qcow2"
    raw.write_bytes(IMAGE)
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True
    )
    files = {"image.qcow2": qcow2.read_bytes(), "image.raw": IMAGE}

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=files[request.match_info["name"]])

    app = web.Application()
    app.router.add_get("/{name}", serve)
    server = await aiohttp_server(app, host="127.0.0.1")
    return f"http://127.0.0.1:{server.port}", {
        n: hashlib.sha256(b).hexdigest() for n, b in files.items()
    }


def mac(i: int) -> str:
    return f"52:54:00:00:00:{i:02x}"


@pytest.fixture
def ca_nodes(start_node, test_pki, tmp_path):
    async def start(count: int, **overrides):
        nodes = []
        for i in range(count):
            disk = tmp_path / f"disk-{i}"
            inventory = NodeInventory(disk, mac(i), f"SER{i}")
            node = await start_node(
                f"n{i}",
                inventory=inventory,
                cert_file=test_pki.node_cert,
                key_file=test_pki.node_key,
                **overrides,
            )
            inventory.path = node.disk
            nodes.append(node)
        return nodes

    return start


def fleet_of(entries, test_pki, **settings):
    data = {
        "wait_interval": 0.1,
        "wait_deadline": 1.5,
        "poll_interval": 0.05,
        "retries": 0,
        **settings,
        "defaults": {"cafile": str(test_pki.ca_pem), "token": TOKEN},
        "nodes": entries,
    }
    return parse_fleet(data, test_pki.ca)


def image(server, digest=None):
    return {
        "url": f"{server.base}/disk.img",
        "checksum": f"sha256:{digest or hashlib.sha256(IMAGE).hexdigest()}",
    }


def written(node) -> bool:
    with open(node.disk, "rb") as handle:
        return handle.read(len(IMAGE)) == IMAGE


async def test_fleet_done_refused_and_unreachable(
    ca_nodes, start_node, test_pki, image_server, tmp_path
):
    good, stranger = await ca_nodes(2)
    bound = await start_node("bound", inventory=NodeInventory(tmp_path / "x", mac(9), "SER9"))
    bound.server.collect_inventory.path = bound.disk
    entries = [
        {
            "name": "good",
            "address": good.address,
            "macs": [mac(0)],
            "serial": "SER0",
            "image": image(image_server),
            "root_device": {"serial": "TEST0001"},
        },
        {
            "name": "stranger",
            "address": stranger.address,
            "macs": [mac(5)],
            "image": image(image_server),
        },
        {
            "name": "bound",
            "address": bound.address,
            "macs": [mac(9).upper()],
            "cafile": None,
            "image": image(image_server),
            "method": "prepare_image",
            "finish": "run_image",
        },
        {"name": "never-up", "address": f"127.0.0.1:{free_port()}", "image": image(image_server)},
    ]
    # "bound" is verified by the token binding: no CA for it
    entries[2].pop("cafile")
    fleet = fleet_of(entries, test_pki)
    fleet = type(fleet)(
        fleet.settings,
        tuple(
            n if n.name != "bound" else type(n)(**{**n.__dict__, "trust": type(n.trust)()})
            for n in fleet.nodes
        ),
    )
    results_path = tmp_path / "results.json"
    nodes = await provision(fleet, results_path)

    assert nodes["good"]["state"] == "done", nodes["good"]
    assert nodes["good"]["root_uuid"]
    assert written(good) and good.power.calls == ["power_off"]
    assert good.agent.node_uuid == nodes["good"]["node_uuid"]
    stored = good.agent.node_info["node"]
    assert stored["instance_info"]["root_device"] == {"serial": "TEST0001"}

    assert nodes["stranger"]["state"] == "failed"
    assert nodes["stranger"]["step"] == "identify"
    assert f"MAC(s) {mac(5)} not present (the agent has: {mac(1)})" in nodes["stranger"]["reason"]
    assert not written(stranger) and stranger.power.calls == []
    assert stranger.agent.node_info is None  # refused before set_node_info

    assert nodes["bound"]["state"] == "done", nodes["bound"]
    assert written(bound) and bound.power.calls == ["reboot"]
    assert nodes["bound"]["fingerprint"] == bound.agent.identity.fingerprint

    assert nodes["never-up"]["state"] == "unreachable"
    assert nodes["never-up"]["reason"].startswith("no answer within 1.5 s")

    on_disk = json.loads(results_path.read_text())
    assert on_disk["nodes"] == nodes
    assert stat.S_IMODE(results_path.stat().st_mode) == 0o600
    assert exit_code(nodes) == 1


async def test_failed_image_write_is_reported_with_the_agents_error(
    ca_nodes, test_pki, image_server, tmp_path
):
    (node,) = await ca_nodes(1)
    fleet = fleet_of(
        [{"name": "n", "address": node.address, "image": image(image_server, "0" * 64)}], test_pki
    )
    nodes = await provision(fleet, tmp_path / "r.json")
    entry = nodes["n"]
    assert entry["state"] == "failed" and entry["step"] == "write_image"
    # the test image fits in the agent's first write block: refused before any write
    assert "checksum" in entry["reason"].lower() and "not touched" in entry["reason"]
    assert node.power.calls == []
    assert exit_code(nodes) == 1


async def test_erase_step(ca_nodes, test_pki, image_server, tmp_path):
    (node,) = await ca_nodes(1)
    with open(node.disk, "r+b") as handle:
        handle.write(IMAGE[: 1024 * 1024])  # an old partition table
    fleet = fleet_of(
        [{"name": "n", "address": node.address, "erase": True, "image": image(image_server)}],
        test_pki,
    )
    nodes = await provision(fleet, tmp_path / "r.json")
    assert nodes["n"]["state"] == "done", nodes["n"]
    names = [r["command_name"] for r in node.agent.executor.history()]
    assert names.index("execute_clean_step") < names.index("execute_deploy_step")
    assert written(node)


async def test_claim_on_first_use(ca_nodes, test_pki, image_server, tmp_path):
    (node,) = await ca_nodes(1, agent_token=None)
    entry = {"name": "n", "address": node.address, "claim": True, "finish": "none"}
    data = {
        "wait_interval": 0.1,
        "poll_interval": 0.05,
        "defaults": {"trust_on_first_use": True},
        "nodes": [entry],
    }
    fleet = parse_fleet(data, tmp_path)
    nodes = await provision(fleet, tmp_path / "r.json")
    assert nodes["n"]["state"] == "done", nodes["n"]
    assert node.agent.has_token and node.agent.token_matches(nodes["n"]["claim_token"])
    assert nodes["n"]["fingerprint"] == node.agent.identity.fingerprint


async def test_resume_after_interruption(ca_nodes, test_pki, image_server, tmp_path):
    quick, slow_a, slow_b = await ca_nodes(3)
    image_server.hold = True
    entries = [
        {"name": "quick", "address": quick.address},
        {"name": "slow-a", "address": slow_a.address, "image": image(image_server)},
        {"name": "slow-b", "address": slow_b.address, "image": image(image_server)},
    ]
    fleet = fleet_of(entries, test_pki)
    results_path = tmp_path / "results.json"
    run = asyncio.create_task(provision(fleet, results_path))
    for _ in range(200):
        await asyncio.sleep(0.05)
        saved = json.loads(results_path.read_text())["nodes"] if results_path.exists() else {}
        if saved.get("quick", {}).get("state") == "done" and all(
            n.agent.executor.running() for n in (slow_a, slow_b)
        ):
            break
    assert quick.power.calls == ["power_off"]
    run.cancel()  # what Ctrl-C does
    with pytest.raises(asyncio.CancelledError):
        await run
    saved = json.loads(results_path.read_text())["nodes"]
    assert saved["quick"]["state"] == "done"
    assert saved["slow-a"]["state"] == "interrupted" and saved["slow-a"]["step"] == "write_image"

    image_server.release.set()  # the agents' writes go on; a resumed run waits for them
    nodes = await provision(fleet, results_path, resume=True)
    assert {name: e["state"] for name, e in nodes.items()} == dict.fromkeys(nodes, "done"), nodes
    assert quick.power.calls == ["power_off"]  # not repeated
    for node in (slow_a, slow_b):
        assert written(node) and node.power.calls == ["power_off"]
        writes = [
            r for r in node.agent.executor.history() if r["command_name"] == "execute_deploy_step"
        ]
        assert len(writes) == 1  # attached to the running write, not a second one
    assert exit_code(nodes) == 0


ZEROS = "sha256:" + "0" * 64
GOOD_IMAGE = f'{{ url = "http://127.0.0.1/i.img", checksum = "{ZEROS}" }}'


def write_fleet(tmp_path, test_pki, top="", defaults="", node="", nodes=None):
    """A fleet file with one good node; each level's extra lines are appended to it."""
    if nodes is None:
        nodes = f'[[nodes]]\nname = "n1"\naddress = "127.0.0.1"\n{node}\n'
    text = (
        f"{top}\n[defaults]\ncafile = {json.dumps(str(test_pki.ca_pem))}\n"
        f'token = "{TOKEN}"\n{defaults}\n\n{nodes}'
    )
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def fleet_error(path) -> str:
    with pytest.raises(FleetError) as raised:
        load_fleet(path)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message[len(f"{path}: ") :]


@pytest.mark.parametrize(
    ("level", "lines", "expected"),
    [
        ("top", "colour = 1", "top level colour: unknown key (known: concurrency,"),
        ("top", "concurrency = 0", "top level concurrency: must be an integer of at least 1"),
        ("top", "retries = true", "top level retries: must be an integer of at least 0"),
        ("top", 'timeout = "soon"', "top level timeout: must be a positive number of seconds"),
        ("defaults", "colour = 1", "[defaults] colour: unknown key (known: name, address,"),
        ("defaults", "erase = 1", "[defaults] erase: must be true or false"),
        (
            "defaults",
            f'image = {{ url = "http://x/i", checksum = "{ZEROS}", colour = "blue" }}',
            "[defaults] image.colour: unknown key (known: url, checksum, id, disk_format)",
        ),
        (
            "defaults",
            'root_device = { colour = "blue" }',
            "[defaults] root_device.colour: unknown root device hint (known: size,",
        ),
        ("node", "colour = 1", "[[nodes]] 'n1' colour: unknown key (known: name,"),
        (
            "node",
            f'image = {{ url = "http://x/i", checksum = "{ZEROS}", colour = "blue" }}',
            "[[nodes]] 'n1' image.colour: unknown key (known: url, checksum, id, disk_format)",
        ),
        (
            "node",
            f'image = {{ url = "http://x/i", checksum = "{ZEROS}", disk_format = "vmdk" }}',
            "[[nodes]] 'n1' image.disk_format: must be one of raw, qcow2",
        ),
        (
            "node",
            f'image = {{ url = "ftp://x/i", checksum = "{ZEROS}" }}',
            "[[nodes]] 'n1' image.url: image URL 'ftp://x/i' is not an http(s) URL",
        ),
        (
            "node",
            'image = { url = "http://x/i" }',
            "[[nodes]] 'n1' image.checksum: is required",
        ),
        (
            "node",
            'image = { url = "http://x/i", checksum = "md5:00" }',
            "[[nodes]] 'n1' image.checksum: a checksum is sha256:<64 hex> or sha512:<128 hex>",
        ),
        ("node", 'image = "http://x/i"', "[[nodes]] 'n1' image: must be a table"),
        (
            "node",
            'root_device = { size = "big" }',
            "[[nodes]] 'n1' root_device: root device hint 'size' is not an integer",
        ),
        ("node", 'method = "dd"', "[[nodes]] 'n1' method: must be one of write_image,"),
        ("node", "port = 0", "[[nodes]] 'n1' port: must be an integer of at least 1"),
        ("node", 'token = "tab\\there"', "[[nodes]] 'n1' token: must be printable ASCII"),
        ("node", "claim = true", "[[nodes]] 'n1' claim: claim makes a fresh token"),
        ("node", 'macs = ["52:54:00:00:00:01", 7]', "[[nodes]] 'n1' macs: must be a list"),
    ],
)
def test_fleet_file_errors_name_the_file_the_table_and_the_key(
    tmp_path, test_pki, level, lines, expected
):
    path = write_fleet(tmp_path, test_pki, **{level: lines})
    assert fleet_error(path).startswith(expected)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("h:0", "'h:0': port must be 1-65535"),
        ("not..an..addr", "'not..an..addr' is neither an IP address nor a host name"),
        ("-bad-.example", "'-bad-.example' is neither an IP address nor a host name"),
        ("a" * 64 + ".example", f"'{'a' * 64}.example' is neither an IP address nor a host name"),
    ],
)
def test_node_addresses_are_checked(tmp_path, test_pki, address, expected):
    nodes = f'[[nodes]]\nname = "n1"\naddress = "{address}"\n'
    path = write_fleet(tmp_path, test_pki, nodes=nodes)
    assert fleet_error(path) == f"[[nodes]] 'n1' address: {expected}"


def test_files_named_in_the_fleet_are_read_and_checked(tmp_path, test_pki):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    path = write_fleet(tmp_path, test_pki, node='cafile = "junk.pem"')
    assert fleet_error(path) == (
        f"[[nodes]] 'n1' cafile: {junk}: not a PEM certificate"
        " (expected -----BEGIN CERTIFICATE-----)"
    )
    path = tmp_path / "other.toml"
    path.write_text('[defaults]\ncafile = "missing.pem"\n[[nodes]]\nname = "a"\naddress = "::1"\n')
    assert fleet_error(path) == (
        f"[defaults] cafile: {tmp_path / 'missing.pem'}: cannot read the certificate:"
        " No such file or directory"
    )
    client = f"cert = {json.dumps(str(test_pki.client_cert))}\n"
    path = write_fleet(
        tmp_path, test_pki, node=client + f"key = {json.dumps(str(test_pki.node_key))}"
    )
    assert fleet_error(path) == (
        f"[[nodes]] 'n1' key: {test_pki.node_key} is not the private key of {test_pki.client_cert}"
    )
    path = write_fleet(tmp_path, test_pki, node=client)
    assert fleet_error(path) == "[[nodes]] 'n1' cert: cert and key go together"
    (tmp_path / "token").write_bytes(b"\xff\xfe\n")
    path = write_fleet(tmp_path, test_pki, node='token_file = "token"')
    assert fleet_error(path) == (
        f"[[nodes]] 'n1' token_file: {tmp_path / 'token'}: the token must be printable ASCII"
    )


def test_fleet_shape_errors(tmp_path, test_pki):
    path = write_fleet(tmp_path, test_pki, nodes="")
    assert fleet_error(path).startswith("[[nodes]]: a fleet needs at least one")
    path = write_fleet(tmp_path, test_pki, nodes='[[nodes]]\naddress = "127.0.0.1"\n')
    assert fleet_error(path) == "[[nodes]] #1 name: every node needs a name"
    twice = '[[nodes]]\nname = "a"\naddress = "127.0.0.1"\n' * 2
    path = write_fleet(tmp_path, test_pki, nodes=twice)
    assert fleet_error(path) == "[[nodes]] name: must be unique: a"
    path = tmp_path / "plain.toml"
    path.write_text('[[nodes]]\nname = "a"\naddress = "127.0.0.1"\n')
    assert fleet_error(path).startswith("[[nodes]] 'a' cafile: no way to verify the agent")


def test_a_good_fleet_file_with_qcow2(tmp_path, test_pki):
    url = "http://127.0.0.1/i.qcow2"
    image = f'image = {{ url = "{url}", checksum = "{ZEROS}", disk_format = "qcow2" }}'
    path = write_fleet(
        tmp_path,
        test_pki,
        top="concurrency = 3",
        defaults=f"erase = true\n{image}",
        node='root_device = { size = ">= 4" }\nproperties = { anything = "goes" }',
    )
    fleet = load_fleet(path)
    assert fleet.settings.concurrency == 3
    (node,) = fleet.nodes
    assert node.erase and node.root_device == {"size": ">= 4"}
    assert node.properties == {"anything": "goes"}
    assert node.image is not None and node.image.image_info("u")["disk_format"] == "qcow2"
    assert node.image.id == "i.qcow2"
    path = write_fleet(tmp_path, test_pki, defaults=f"image = {GOOD_IMAGE}")
    (node,) = load_fleet(path).nodes
    assert node.image is not None and node.image.image_info("u")["disk_format"] == "raw"


async def test_progress_bars_on_a_terminal(ca_nodes, test_pki, tmp_path):
    from rich.console import Console

    from conductor.progress import RichReporter

    (node,) = await ca_nodes(1)
    screen = io.StringIO()
    reporter = RichReporter(Console(file=screen, force_terminal=True, width=100))
    fleet = fleet_of([{"name": "shown", "address": node.address, "finish": "none"}], test_pki)
    nodes = await provision(fleet, tmp_path / "r.json", reporter=reporter)
    assert nodes["shown"]["state"] == "done"
    text = screen.getvalue()
    assert "shown: done" in text and "fleet (1 done)" in text


async def test_trust_on_first_use_is_pinned_on_resume(start_node, tmp_path):
    first = await start_node("first", inventory=NodeInventory(tmp_path / "d", mac(1), "S"))
    port = first.server.port
    entry = {"name": "n", "address": first.address, "macs": [mac(2)], "token": TOKEN}
    data = {
        "wait_interval": 0.1,
        "wait_deadline": 1.0,
        "retries": 0,
        "defaults": {"trust_on_first_use": True},
        "nodes": [entry],
    }
    fleet = parse_fleet(data, tmp_path)
    results = tmp_path / "r.json"
    nodes = await provision(fleet, results)
    assert nodes["n"]["state"] == "failed"  # wrong MAC; the certificate was recorded
    assert nodes["n"]["fingerprint"] == first.agent.identity.fingerprint
    await first.server.stop()
    # another machine (another certificate) answers at the same address
    impostor = await start_node("impostor", listen_port=port)
    assert impostor.agent.identity.fingerprint != first.agent.identity.fingerprint
    nodes = await provision(fleet, results, resume=True)
    assert nodes["n"]["state"] == "failed"
    assert "does not match the pin" in nodes["n"]["reason"]
    assert impostor.agent.guard.summary().get("token", 0) == 0
    assert impostor.agent.executor.history() == []


async def test_qcow2_images_are_sent_with_their_format(ca_nodes, test_pki, qcow2_server, tmp_path):
    base, digests = qcow2_server
    nodes = await ca_nodes(2)

    def entry(i, name):
        url = f"{base}/{name}"
        image = {"url": url, "checksum": f"sha256:{digests[name]}", "disk_format": "qcow2"}
        return {"name": f"n{i}", "address": nodes[i].address, "image": image, "finish": "none"}

    fleet = fleet_of([entry(0, "image.qcow2"), entry(1, "image.raw")], test_pki)
    results = await provision(fleet, tmp_path / "r.json")
    assert results["n0"]["state"] == "done" and written(nodes[0])
    assert results["n1"]["state"] == "failed" and not written(nodes[1])
    assert "disk_format qcow2 but the image is raw" in results["n1"]["reason"]
