"""standby.prepare_image end to end over the agent's TLS API, onto a sparse file 'disk'."""

from __future__ import annotations

import hashlib
import os

import pytest
from aiohttp import web

from image.writer import holds_mounts, mounted_devices
from tests.agent.conftest import FakeInventory, start
from tests.image.conftest import disk_entry
from tests.image.test_partitions import DISK, ESP, LINUX, P1, P2, gpt_image

GIB = 1024**3
# A GPT disk (ESP + root) followed by data that is not a multiple of the write block.
IMAGE = gpt_image(DISK, [(ESP, P1, 2048, 4095), (LINUX, P2, 4096, 8192 - 35)]) + os.urandom(
    3 * 1024 * 1024 + 123
)


class DiskInventory(FakeInventory):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def __call__(self):
        data = super().__call__()
        data["disks"] = [disk_entry(str(self.path), 5 * GIB, "TEST0001")]
        return data


@pytest.fixture
async def image_server(aiohttp_server):
    async def image(request):
        return web.Response(body=IMAGE, headers={"Accept-Ranges": "bytes"})

    app = web.Application()
    app.router.add_get("/disk.img", image)
    server = await aiohttp_server(app, host="127.0.0.1")
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def node(tmp_path):
    disk = tmp_path / "disk"
    with open(disk, "wb") as handle:
        handle.truncate(5 * GIB)  # sparse
        handle.seek(5 * GIB - 4)
        handle.write(b"TAIL")
    run = await start(tmp_path / "state", inventory=DiskInventory(disk))
    run.disk = disk
    yield run
    await run.client.close()
    await run.server.stop()


def image_info(base, digest):
    return {
        "id": "img-1",
        "urls": [f"{base}/disk.img"],
        "disk_format": "raw",
        "os_hash_algo": "sha256",
        "os_hash_value": digest,
    }


async def test_raw_image_written_verified_and_synced(node, image_server):
    info = image_info(image_server, hashlib.sha256(IMAGE).hexdigest())
    code, result = await node.post(
        {"name": "standby.prepare_image", "params": {"image_info": info}}, wait=True
    )
    assert code == 200, result
    assert result["command_status"] == "SUCCEEDED", result
    assert result["command_result"] == {
        "result": f"prepare_image: image (img-1) written to device {node.disk} root_uuid={DISK}"
    }
    with open(node.disk, "rb") as handle:
        assert handle.read(len(IMAGE)) == IMAGE
    _, uuids = await node.post({"name": "standby.get_partition_uuids"})
    assert uuids["command_result"] == {
        "root uuid": str(DISK),
        "efi system partition uuid": str(P1),
        "partitions": {f"{node.disk}1": str(P1), f"{node.disk}2": str(P2)},
    }


async def test_partition_uuids_before_any_image_are_empty_as_in_ipa(node):
    _, result = await node.post({"name": "standby.get_partition_uuids"})
    assert result["command_status"] == "SUCCEEDED" and result["command_result"] == {}


async def test_checksum_mismatch_before_the_first_write_leaves_the_disk_alone(node, image_server):
    """The whole image fits in the first write block: the digest is known wrong before
    any byte reaches the disk, so nothing is written or wiped (a mismatch after data
    reached the disk wipes both ends: test_devices.py)."""
    with open(node.disk, "r+b") as handle:
        handle.write(b"OLD-BOOT-SECTOR")
    wrong = "0" * 64
    _, result = await node.post(
        {
            "name": "standby.prepare_image",
            "params": {"image_info": image_info(image_server, wrong)},
        },
        wait=True,
    )
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["code"] == 400
    message = result["command_error"]["message"]
    assert wrong in message and hashlib.sha256(IMAGE).hexdigest() in message
    assert message.endswith(f"{node.disk} was not touched")
    with open(node.disk, "rb") as handle:
        assert handle.read(15) == b"OLD-BOOT-SECTOR"
        handle.seek(5 * GIB - 4)
        assert handle.read() == b"TAIL"


async def test_mislabelled_format_and_bad_configdrive_are_refused(node, image_server):
    info = image_info(image_server, hashlib.sha256(IMAGE).hexdigest())
    for params in (
        {"image_info": {**info, "disk_format": "qcow2"}},  # the bytes are raw
        {"image_info": info, "configdrive": "H4sI"},
    ):
        _, result = await node.post({"name": "standby.prepare_image", "params": params}, wait=True)
        assert result["command_status"] == "FAILED"
        assert result["command_error"]["code"] == 400
    with open(node.disk, "rb") as handle:
        assert handle.read(4) == bytes(4)  # untouched


async def test_unsupported_disk_format_is_refused_when_asked(node, image_server):
    """Known from the request alone: the POST itself answers 400 and no command runs,
    for prepare_image and for ironic's write_image deploy step alike."""
    info = image_info(image_server, hashlib.sha256(IMAGE).hexdigest())
    for body in (
        {
            "name": "standby.prepare_image",
            "params": {"image_info": {**info, "disk_format": "vmdk"}},
        },
        {
            "name": "deploy.execute_deploy_step",
            "params": {"step": deploy_step({**info, "disk_format": "vhd"})},
        },
        {"name": "standby.prepare_image", "params": {"image_info": {**info, "disk_format": 7}}},
    ):
        code, answer = await node.post(body)
        assert code == 400, answer
        assert "is not permitted (permitted: raw, qcow2)" in answer["faultstring"], answer
    _, listing = await node.get("/v1/commands/")
    assert listing["commands"] == []


async def test_request_without_checksum_or_urls_is_refused_before_anything_starts(
    node, image_server
):
    """A missing checksum or URL list is a 400 on the POST: no command, the disk untouched."""
    with open(node.disk, "r+b") as handle:
        handle.write(b"precious")
    info = image_info(image_server, hashlib.sha256(IMAGE).hexdigest())
    no_checksum = {k: v for k, v in info.items() if k not in ("os_hash_algo", "os_hash_value")}
    no_checksum.pop("checksum", None)
    for bad, words in (
        (no_checksum, "image_info has no checksum"),
        ({**info, "urls": []}, "urls must be a non-empty list"),
        ({**info, "os_hash_algo": "sha256", "os_hash_value": "zz"}, "os_hash_value"),
    ):
        code, answer = await node.post(
            {"name": "standby.prepare_image", "params": {"image_info": bad}}
        )
        assert code == 400, answer
        assert words in answer["faultstring"], answer
    _, listing = await node.get("/v1/commands/")
    assert listing["commands"] == []
    with open(node.disk, "rb") as handle:
        assert handle.read(8) == b"precious"


def test_mounted_device_detection():
    mounted = mounted_devices(
        "/dev/sda2 / ext4 rw 0 0\nproc /proc proc rw 0 0\n/dev/nvme0n1p1 /boot/efi vfat rw 0 0\n"
    )
    assert holds_mounts("/dev/sda", mounted)
    assert holds_mounts("/dev/nvme0n1", mounted)
    assert not holds_mounts("/dev/sdb", mounted)
    assert not holds_mounts("/dev/sd", mounted)


def deploy_step(info):
    return {
        "step": "write_image",
        "priority": 0,
        "interface": "deploy",
        "args": {"image_info": info, "configdrive": None},
    }


async def test_ironic_write_image_deploy_step(node, image_server):
    info = image_info(image_server, hashlib.sha256(IMAGE).hexdigest())
    step = deploy_step(info)
    _, result = await node.post(
        {
            "name": "deploy.execute_deploy_step",
            "params": {
                "step": step,
                "node": {"instance_info": {"root_device": {"serial": "test0001"}}},
                "ports": [],
                "deploy_version": {"TacetHardwareManager": "1.0"},
            },
        },
        wait=True,
    )
    assert result["command_status"] == "SUCCEEDED", result
    assert result["command_result"]["deploy_step"] == step
    assert "written to device" in result["command_result"]["deploy_result"]["result"]
    with open(node.disk, "rb") as handle:
        assert handle.read(len(IMAGE)) == IMAGE


async def test_deploy_step_errors(node, image_server):
    info = image_info(image_server, hashlib.sha256(IMAGE).hexdigest())
    _, result = await node.post(
        {
            "name": "deploy.execute_deploy_step",
            "params": {
                "step": deploy_step(info),
                "deploy_version": {"TacetHardwareManager": "0.9"},
            },
        },
        wait=True,
    )
    assert result["command_status"] == "CLEAN_VERSION_MISMATCH"
    assert result["command_error"]["type"] == "VersionMismatch"
    assert result["command_error"]["code"] == 409
    _, result = await node.post(
        {
            "name": "deploy.execute_deploy_step",
            "params": {"step": {"step": "frobnicate", "interface": "deploy"}},
        },
        wait=True,
    )
    assert result["command_status"] == "FAILED" and result["command_error"]["code"] == 400
    _, result = await node.post(
        {
            "name": "deploy.execute_deploy_step",
            "params": {
                "step": deploy_step(info),
                "node": {"properties": {"root_device": {"serial": "OTHER"}}},
            },
        },
        wait=True,
    )
    assert result["command_status"] == "FAILED"
    assert "no disk matches" in result["command_error"]["message"]
    with open(node.disk, "rb") as handle:
        assert handle.read(4) == bytes(4)  # nothing was written
