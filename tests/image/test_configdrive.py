"""Configdrives written to a partition at the end of a real (loop) disk."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess

import pytest

from image.configdrive import ConfigDriveError, decode, gzip_b64, label_of
from image.partitions import SECTOR, parse_partition_table
from tests.image.conftest import GIB, MIB, Served, disk_entry, make_gpt_image, need, read, run
from tests.image.test_devices import info, prepare


def iso(tmp_path, label="config-2"):
    need("genisoimage")
    tree = tmp_path / "cd" / "openstack" / "latest"
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "meta_data.json").write_text('{"uuid": "8a9b", "hostname": "node-1"}')
    out = tmp_path / f"{label}.iso"
    run("genisoimage", "-quiet", "-o", str(out), "-V", label, "-r", "-J", str(tmp_path / "cd"))
    return out.read_bytes()


def mbr_image(path, size):
    need("sfdisk")
    with open(path, "wb") as handle:
        handle.truncate(size)
    subprocess.run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", str(path)],
        input="label: dos\n2048,16384,ef\n,,83\n",
        text=True,
        check=True,
        capture_output=True,
    )


def test_decode_checks_encoding_size_and_label(tmp_path):
    data = iso(tmp_path)
    assert label_of(data) == b"config-2"
    assert decode(gzip_b64(data)) == data
    assert decode(base64.b64encode(data).decode()) == data  # not gzipped: accepted as is
    with pytest.raises(ConfigDriveError, match="base64"):
        decode("not base64 at all!")
    with pytest.raises(ConfigDriveError, match="labelled config-2"):
        decode(gzip_b64(iso(tmp_path, "other")))
    with pytest.raises(ConfigDriveError, match="larger than 64 MiB"):
        decode(gzip_b64(bytes(65 * MIB)))


def check_drive(disk, data, kind):
    table = parse_partition_table(read(disk, MIB))
    assert table is not None and table.kind == kind
    last = max(table.partitions, key=lambda p: p.first)
    size = os.path.getsize(disk) if not disk.startswith("/dev/") else None
    with open(disk, "rb") as handle:
        disk_bytes = handle.seek(0, os.SEEK_END)
    assert size is None or size == disk_bytes
    # a new partition of 64 MiB at the end of the disk holds the ISO
    assert (last.last + 1) * SECTOR > disk_bytes - 2 * MIB
    assert (last.last - last.first + 1) * SECTOR >= 63 * MIB
    assert read(disk, len(data), last.first * SECTOR) == data
    return table


async def test_gpt_configdrive_inline(tmp_path, loop_devices, agent_with, files):
    source = tmp_path / "gpt.raw"
    make_gpt_image(source, 24 * MIB)
    image = source.read_bytes()
    data = iso(tmp_path)
    disk = loop_devices(5 * GIB)
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")])
    files["gpt.raw"] = Served(image)
    result = await prepare(node, info(f"{files.base}/gpt.raw", image), gzip_b64(data))
    assert result["command_status"] == "SUCCEEDED", result
    table = check_drive(disk, data, "gpt")
    assert len(table.partitions) == 3
    # sgdisk moved the backup header to the disk's end and agrees the table is sound
    assert "No problems found" in run("sgdisk", "-v", disk)
    names = run("sgdisk", "-i", "3", disk)
    assert "config-2" in names
    _, uuids = await node.post({"name": "standby.get_partition_uuids"})
    assert len(uuids["command_result"]["partitions"]) == 3


async def test_mbr_configdrive_from_url(tmp_path, loop_devices, agent_with, files):
    source = tmp_path / "mbr.raw"
    mbr_image(source, 24 * MIB)
    image = source.read_bytes()
    data = iso(tmp_path)
    disk = loop_devices(5 * GIB)
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")])
    files["mbr.raw"] = Served(image)
    files["configdrive"] = Served(gzip_b64(data).encode())
    result = await prepare(node, info(f"{files.base}/mbr.raw", image), f"{files.base}/configdrive")
    assert result["command_status"] == "SUCCEEDED", result
    table = check_drive(disk, data, "dos")
    assert [p.number for p in table.partitions] == [1, 2, 3]


async def test_existing_config2_partition_is_reused(tmp_path, loop_devices, agent_with, files):
    source = tmp_path / "gpt.raw"
    make_gpt_image(source, 24 * MIB)
    old = iso(tmp_path / "old")
    image = bytearray(source.read_bytes())
    image[2048 * SECTOR : 2048 * SECTOR + len(old)] = old  # partition 1 is a config-2 ISO
    image = bytes(image)
    data = iso(tmp_path)
    disk = loop_devices(5 * GIB)
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")])
    files["gpt.raw"] = Served(image)
    result = await prepare(node, info(f"{files.base}/gpt.raw", image), gzip_b64(data))
    assert result["command_status"] == "SUCCEEDED", result
    table = parse_partition_table(read(disk, MIB))
    assert len(table.partitions) == 2  # nothing added
    assert read(disk, len(data), 2048 * SECTOR) == data


async def test_bad_configdrive_refused_before_writing(tmp_path, loop_devices, agent_with, files):
    image = os.urandom(MIB)
    disk = loop_devices(5 * GIB)
    with open(disk, "r+b") as handle:
        handle.write(b"BEFORE")
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")])
    files["x.raw"] = Served(image)
    result = await prepare(
        node,
        info(f"{files.base}/x.raw", image, os_hash_value=hashlib.sha256(image).hexdigest()),
        gzip_b64(iso(tmp_path, "wrong")),
    )
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["code"] == 400
    assert "config-2" in result["command_error"]["message"]
    assert read(disk, 6) == b"BEFORE"
