"""Images written onto real loop devices through the agent's API."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import lzma
import os

import pytest

from image.errors import Conflict
from image.partitions import parse_partition_table
from image.provision import DiskInUse, check_not_in_use, holders
from tests.image.conftest import (
    GIB,
    MIB,
    Served,
    disk_entry,
    make_gpt_image,
    need,
    read,
    run,
)


def payload(tmp_path, size=24 * MIB):
    """A GPT image (sgdisk) with random bytes in both partitions."""
    path = tmp_path / "source.raw"
    make_gpt_image(path, size)
    data = bytearray(path.read_bytes())
    data[2 * MIB : 3 * MIB] = os.urandom(MIB)
    data[12 * MIB : 13 * MIB] = os.urandom(MIB)
    path.write_bytes(data)
    return bytes(data)


def info(url, data, **extra):
    return {
        "id": "img",
        "urls": [url],
        "os_hash_algo": "sha256",
        "os_hash_value": hashlib.sha256(data).hexdigest(),
        **extra,
    }


async def prepare(node, image_info, configdrive=None):
    params = {"image_info": image_info}
    if configdrive is not None:
        params["configdrive"] = configdrive
    _, result = await node.post({"name": "standby.prepare_image", "params": params}, wait=True)
    return result


async def test_raw_to_the_disk_the_hints_choose(tmp_path, loop_devices, agent_with, files, caplog):
    data = payload(tmp_path)
    small, chosen = loop_devices(5 * GIB), loop_devices(6 * GIB)
    for device in (small, chosen):
        with open(device, "r+b") as handle:
            handle.write(b"BEFORE")
    node = await agent_with(
        [disk_entry(small, 5 * GIB, "SMALL"), disk_entry(chosen, 6 * GIB, "WANTED")]
    )
    await node.post(
        {
            "name": "poll.set_node_info",
            "params": {
                "node_info": {"node": {"properties": {"root_device": {"serial": "wanted"}}}}
            },
        }
    )
    files["disk.raw"] = Served(data, drop_after=5 * MIB + 17)  # resumed with Range
    result = await prepare(node, info(f"{files.base}/disk.raw", data, disk_format="raw"))
    assert result["command_status"] == "SUCCEEDED", result
    assert read(chosen, len(data)) == data
    assert read(small, 6) == b"BEFORE"
    table = parse_partition_table(data[:MIB])
    _, uuids = await node.post({"name": "standby.get_partition_uuids"})
    esp = next(p.uuid for p in table.partitions if p.is_esp)
    assert uuids["command_result"]["efi system partition uuid"] == esp
    assert uuids["command_result"]["root uuid"] == table.disk_id
    assert f"root_uuid={table.disk_id}" in result["command_result"]["result"]
    # the kernel was asked to re-read the table (BLKRRPART on a --partscan loop device)
    assert "could not re-read the partition table" not in caplog.text


async def test_compressed_raw_streams_through_decompression(
    tmp_path, loop_devices, agent_with, files
):
    data = payload(tmp_path)
    disk = loop_devices(5 * GIB)
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")])
    for name, blob in (
        ("disk.raw.gz", gzip.compress(data, 1)),
        ("disk.raw.xz", lzma.compress(data)),
    ):
        with open(disk, "r+b") as handle:
            handle.write(bytes(len(data)))
        files[name] = Served(blob, fail=[500])  # 500 then 200: retried
        # the checksum is over the downloaded (compressed) bytes, as the image service has it
        result = await prepare(node, info(f"{files.base}/{name}", blob))
        assert result["command_status"] == "SUCCEEDED", (name, result)
        assert read(disk, len(data)) == data, name


async def test_gzip_restarted_when_range_is_not_offered_and_bad_checksum_wipes(
    tmp_path, loop_devices, agent_with, files
):
    data = payload(tmp_path)
    blob = gzip.compress(data, 1)
    disk = loop_devices(5 * GIB)
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")])
    # dropped mid-stream by a server without ranges: the decoder starts over from byte 0
    files["a.gz"] = Served(blob, drop_after=len(blob) // 2, ranges=False)
    result = await prepare(node, info(f"{files.base}/a.gz", blob))
    assert result["command_status"] == "SUCCEEDED", result
    assert files["a.gz"].requests == 2
    assert read(disk, len(data)) == data
    # a wrong checksum fails after the data streamed: both ends of the disk are wiped
    files["b.gz"] = Served(blob)
    result = await prepare(node, info(f"{files.base}/b.gz", b"other"))
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["code"] == 400
    assert hashlib.sha256(blob).hexdigest() in result["command_error"]["message"]
    assert result["command_error"]["message"].endswith(f"{disk} was wiped")
    assert read(disk, MIB) == bytes(MIB)
    assert read(disk, MIB, 5 * GIB - MIB) == bytes(MIB)


async def test_gzip_of_a_qcow2_is_not_written_as_raw(tmp_path, loop_devices, agent_with, files):
    need("qemu-img")
    raw = tmp_path / "s.raw"
    raw.write_bytes(payload(tmp_path))
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(tmp_path / "s.qcow2"))
    blob = gzip.compress((tmp_path / "s.qcow2").read_bytes())
    disk = loop_devices(5 * GIB)
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")])
    files["x.gz"] = Served(blob)
    result = await prepare(node, info(f"{files.base}/x.gz", blob))
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["code"] == 400
    assert "qcow2 compressed with gzip" in result["command_error"]["message"]


async def test_qcow2_converted_onto_the_disk(tmp_path, loop_devices, agent_with, files):
    need("qemu-img")
    data = payload(tmp_path)
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(tmp_path / "source.raw"),
        str(tmp_path / "disk.qcow2"))  # fmt: skip
    blob = (tmp_path / "disk.qcow2").read_bytes()
    disk = loop_devices(5 * GIB)
    with open(disk, "r+b") as handle:
        handle.write(b"\xff" * (len(data) + MIB))
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")])
    files["disk.qcow2"] = Served(blob)
    result = await prepare(node, info(f"{files.base}/disk.qcow2", blob, disk_format="qcow2"))
    assert result["command_status"] == "SUCCEEDED", result
    assert read(disk, len(data)) == data


async def test_qcow2_with_backing_file_refused(tmp_path, loop_devices, agent_with, files):
    need("qemu-img")
    base = tmp_path / "base.qcow2"
    run("qemu-img", "create", "-f", "qcow2", str(base), "64M")
    child = tmp_path / "child.qcow2"
    run("qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(child))
    blob = child.read_bytes()
    disk = loop_devices(5 * GIB)
    with open(disk, "r+b") as handle:
        handle.write(b"BEFORE")
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")])
    files["child.qcow2"] = Served(blob)
    result = await prepare(node, info(f"{files.base}/child.qcow2", blob, disk_format="qcow2"))
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["code"] == 400
    assert "backing file" in result["command_error"]["message"]
    assert read(disk, 6) == b"BEFORE"  # never touched


async def test_disk_too_small(tmp_path, loop_devices, agent_with, files):
    need("qemu-img")
    big = tmp_path / "big.qcow2"
    run("qemu-img", "create", "-f", "qcow2", str(big), "6G")
    disk = loop_devices(5 * GIB)
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")])
    files["big.qcow2"] = Served(big.read_bytes())
    result = await prepare(
        node, info(f"{files.base}/big.qcow2", big.read_bytes(), disk_format="qcow2")
    )
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["code"] == 400
    assert "larger than" in result["command_error"]["message"]
    # a raw image larger than the disk is refused from its Content-Length
    small = loop_devices(4 * GIB + MIB)
    node = await agent_with([disk_entry(small, 4 * GIB + MIB, "D2")])
    too_big = bytes(4 * GIB + 2 * MIB)
    files["huge.raw"] = Served(too_big)
    result = await prepare(node, info(f"{files.base}/huge.raw", b"", os_hash_value="0" * 64))
    assert result["command_status"] == "FAILED"
    assert "does not fit" in result["command_error"]["message"]


async def test_progress_visible_while_running(tmp_path, loop_devices, agent_with, files):
    data = os.urandom(12 * MIB)
    disk = loop_devices(5 * GIB)
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")])
    files["slow.raw"] = Served(data, piece=256 * 1024, delay=0.05)
    code, started = await node.post(
        {
            "name": "standby.prepare_image",
            "params": {"image_info": info(f"{files.base}/slow.raw", data)},
        }
    )
    assert code == 200 and started["command_status"] == "RUNNING"
    seen = []
    for _ in range(200):
        _, listing = await node.get("/v1/commands/")
        last = listing["commands"][-1]
        if last["command_status"] != "RUNNING":
            break
        if last["command_result"]:
            seen.append(last["command_result"])
        await asyncio.sleep(0.05)
    assert last["command_status"] == "SUCCEEDED", last
    middle = [s for s in seen if 0 < s["downloaded_bytes"] < len(data)]
    assert middle, seen
    sample = middle[-1]
    assert sample["stage"] == "download" and sample["device"] == disk
    assert sample["total_bytes"] == len(data)
    assert sample["rate_bytes_per_second"] > 0
    assert sample["written_bytes"] <= sample["downloaded_bytes"]
    assert any(s["written_bytes"] > 0 for s in seen)
    assert last["command_result"] == {
        "result": f"prepare_image: image (img) written to device {disk} root_uuid=None"
    }


def test_disk_with_holders_refused(tmp_path):
    """An LVM/dm/md device built on the disk or one of its partitions makes it in use
    (a sysfs tree laid out as the kernel does: this machine has no device-mapper)."""
    sys_block = tmp_path / "block"
    (sys_block / "sdb" / "holders").mkdir(parents=True)
    (sys_block / "sdb" / "sdb1" / "holders").mkdir(parents=True)
    (sys_block / "sdc" / "holders").mkdir(parents=True)
    (sys_block / "sdc" / "holders" / "md0").mkdir()
    (sys_block / "sdb" / "sdb1" / "holders" / "dm-0").mkdir()
    assert holders("/dev/sdb", sys_block) == ["dm-0"]
    assert holders("/dev/sdc", sys_block) == ["md0"]
    assert holders("/dev/sdd", sys_block) == []
    with pytest.raises(DiskInUse) as caught:
        check_not_in_use("/dev/sdb", sys_block)
    assert isinstance(caught.value, Conflict)  # the agent answers 409
    assert "in use by dm-0" in str(caught.value)
    check_not_in_use("/dev/sdd", sys_block)


async def test_agent_stopping_mid_write_wipes_the_disk(tmp_path, loop_devices, agent_with, files):
    data = os.urandom(24 * MIB)
    disk = loop_devices(5 * GIB)
    with open(disk, "r+b") as handle:
        handle.seek(5 * GIB - 6)
        handle.write(b"BEFORE")
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")])
    files["slow.raw"] = Served(data, piece=MIB, delay=0.2)
    await node.post(
        {
            "name": "standby.prepare_image",
            "params": {"image_info": info(f"{files.base}/slow.raw", data)},
        }
    )
    for _ in range(100):
        _, listing = await node.get("/v1/commands/")
        if (listing["commands"][-1]["command_result"] or {}).get("written_bytes", 0) > 0:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the write never started")
    assert read(disk, MIB) == data[:MIB]
    await node.agent.executor.stop("test stops the agent")
    _, listing = await node.get("/v1/commands/")
    assert listing["commands"][-1]["command_status"] == "FAILED"
    assert read(disk, MIB) == bytes(MIB)
    assert read(disk, 6, 5 * GIB - 6) == bytes(6)


@pytest.mark.parametrize("declared", ["raw", None])
async def test_qcow2_declared_raw_or_not_at_all_never_reaches_the_disk(
    tmp_path, loop_devices, agent_with, files, declared
):
    """The head of the stream is inspected before the first byte is written: a qcow2 (by
    qemu-img, larger than a write block) sent as raw, or with no disk_format, fails and
    leaves the disk as it was (neither written nor wiped)."""
    need("qemu-img")
    (tmp_path / "source.raw").write_bytes(os.urandom(12 * MIB))
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(tmp_path / "source.raw"),
        str(tmp_path / "disk.qcow2"))  # fmt: skip
    blob = (tmp_path / "disk.qcow2").read_bytes()
    assert len(blob) > 8 * MIB  # more than the first write block: streamed, it would land
    disk = loop_devices(5 * GIB)
    with open(disk, "r+b") as handle:
        handle.write(b"BEFORE")
        handle.seek(5 * GIB - 5)
        handle.write(b"AFTER")
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")])
    files["disk.qcow2"] = Served(blob)
    extra = {"disk_format": declared} if declared else {}
    result = await prepare(node, info(f"{files.base}/disk.qcow2", blob, **extra))
    assert result["command_status"] == "FAILED"
    error = result["command_error"]
    assert error["code"] == 400
    assert error["message"].startswith("the image is qcow2")
    assert error["message"].endswith(f"{disk} was not touched")
    assert ("disk_format says raw" if declared else "declare disk_format qcow2") in error["message"]
    assert read(disk, 6) == b"BEFORE"
    assert read(disk, 5, 5 * GIB - 5) == b"AFTER"


async def test_raw_declared_qcow2_fails_at_its_first_bytes(
    tmp_path, loop_devices, agent_with, files
):
    """A qcow2 goes to a temp file before conversion; its first 4 KiB must show qcow2,
    so a mislabelled image is refused without downloading the rest."""
    data = os.urandom(24 * MIB)
    disk = loop_devices(5 * GIB)
    with open(disk, "r+b") as handle:
        handle.write(b"BEFORE")
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")])
    files["disk.raw"] = Served(data, piece=MIB, delay=0.05)
    result = await prepare(node, info(f"{files.base}/disk.raw", data, disk_format="qcow2"))
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["code"] == 400
    message = result["command_error"]["message"]
    assert message == (
        f"image_info says disk_format qcow2 but the image is raw; {disk} was not touched"
    )
    assert files["disk.raw"].sent < len(data) // 2
    assert read(disk, 6) == b"BEFORE"
