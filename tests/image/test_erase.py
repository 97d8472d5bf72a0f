"""erase_devices_metadata and erase_devices on real loop devices, never the agent's disk."""

from __future__ import annotations

import os

import pytest

from image import provision
from image.erase import EraseError, EraseProgress, agent_disks, erasable, erase
from image.partitions import parse_partition_table
from tests.image.conftest import GIB, MIB, disk_entry, need, read, run

EXT4_MAGIC_AT = 1080


@pytest.fixture
def mounts(tmp_path, monkeypatch):
    """A /proc/mounts of the test's making: which loop device 'holds the agent'."""
    path = tmp_path / "mounts"
    path.write_text("proc /proc proc rw 0 0\n")
    monkeypatch.setattr(provision, "MOUNTS", path)
    return path


def formatted_disk(loop_devices):
    """A GPT disk (sgdisk) with an ext4 filesystem in partition 2 and a marker mid-disk."""
    need("sgdisk")
    need("mkfs.ext4")
    disk = loop_devices(5 * GIB)
    run("sgdisk", "-n1:2048:+8M", "-t1:ef00", "-n2:0:+64M", "-t2:8300", disk)
    table = parse_partition_table(read(disk, MIB))
    second = table.partitions[1]
    run("mkfs.ext4", "-q", "-F", "-E", f"offset={second.first * 512}", disk, "65536")
    assert read(disk, 2, second.first * 512 + EXT4_MAGIC_AT) == b"\x53\xef"
    with open(disk, "r+b") as handle:
        handle.seek(2 * GIB)
        handle.write(b"MIDDLE")
    return disk, second


async def step(node, name, kind="clean", version=None):
    params = {"step": {"step": name, "interface": "deploy", "priority": 99}, "node": {}}
    if version is not None:
        params[f"{kind}_version"] = version
    _, result = await node.post(
        {"name": f"{kind}.execute_{kind}_step", "params": params}, wait=True
    )
    return result


async def test_erase_devices_metadata(loop_devices, agent_with, mounts):
    disk, second = formatted_disk(loop_devices)
    agents = loop_devices(5 * GIB, "agent")
    with open(agents, "r+b") as handle:
        handle.write(b"AGENT-ROOT")
    mounts.write_text(f"{agents} / ext4 rw 0 0\nproc /proc proc rw 0 0\n")
    node = await agent_with([disk_entry(disk, 5 * GIB, "A"), disk_entry(agents, 5 * GIB, "B")])
    result = await step(node, "erase_devices_metadata")
    assert result["command_status"] == "SUCCEEDED", result
    assert result["command_result"]["clean_result"] == {
        "erased": {disk: "metadata"},
        "skipped": [agents],
    }
    assert parse_partition_table(read(disk, MIB)) is None
    assert run("wipefs", "--no-act", disk).strip() == ""
    assert read(disk, 2, second.first * 512 + EXT4_MAGIC_AT) == bytes(2)
    assert read(disk, MIB, 5 * GIB - MIB) == bytes(MIB)  # backup GPT header gone
    assert read(disk, 6, 2 * GIB) == b"MIDDLE"  # metadata only
    assert read(agents, 10) == b"AGENT-ROOT"


async def test_erase_devices_as_deploy_step(loop_devices, agent_with, mounts):
    disk = loop_devices(4 * GIB)
    offsets = (0, GIB + 12345, 4 * GIB - 4096)
    with open(disk, "r+b") as handle:
        for offset in offsets:
            handle.seek(offset)
            handle.write(os.urandom(4096))
    node = await agent_with([disk_entry(disk, 4 * GIB, "A")])
    result = await step(node, "erase_devices", kind="deploy")
    assert result["command_status"] == "SUCCEEDED", result
    erased = result["command_result"]["deploy_result"]["erased"]
    assert erased[disk] in ("discard", "zeroout", "write")
    for offset in offsets:
        assert read(disk, 4096, offset) == bytes(4096)


async def test_clean_version_mismatch_and_unknown_step(loop_devices, agent_with, mounts):
    disk = loop_devices(4 * GIB)
    with open(disk, "r+b") as handle:
        handle.write(b"KEEP")
    node = await agent_with([disk_entry(disk, 4 * GIB, "A")])
    result = await step(node, "erase_devices", version={"TacetHardwareManager": "0.1"})
    assert result["command_status"] == "CLEAN_VERSION_MISMATCH"
    assert result["command_error"]["type"] == "VersionMismatch"
    result = await step(node, "write_image")
    assert result["command_status"] == "FAILED" and result["command_error"]["code"] == 400
    assert read(disk, 4) == b"KEEP"


def test_agent_disks_follow_partitions_and_device_mapper(tmp_path):
    """sysfs laid out as the kernel does: sda2 is a partition of sda, dm-0 sits on sdb1."""
    sys_class = tmp_path / "class"
    block = tmp_path / "devices"
    (block / "sda" / "sda2").mkdir(parents=True)
    (block / "sda" / "sda2" / "partition").write_text("2")
    (block / "sdb" / "sdb1").mkdir(parents=True)
    (block / "sdb" / "sdb1" / "partition").write_text("1")
    (block / "dm-0" / "slaves").mkdir(parents=True)
    (block / "dm-0" / "slaves" / "sdb1").symlink_to(block / "sdb" / "sdb1")
    sys_class.mkdir()
    for path in (block / "sda", block / "sda" / "sda2", block / "sdb", block / "sdb" / "sdb1"):
        (sys_class / path.name).symlink_to(path)
    (sys_class / "dm-0").symlink_to(block / "dm-0")
    mounts = "/dev/sda2 / ext4 rw 0 0\n/dev/mapper/x /data xfs rw 0 0\n/dev/dm-0 /var xfs rw 0 0\n"
    assert agent_disks(mounts, sys_class) >= {"sda", "sdb"}
    keep, skip = erasable(["/dev/sda", "/dev/sdb", "/dev/sdc"], mounts, sys_class)
    assert keep == ["/dev/sdc"] and skip == ["/dev/sda", "/dev/sdb"]


def test_erase_reports_progress_and_falls_back_to_zeroing(loop_devices, tmp_path):
    disk = loop_devices(GIB)
    with open(disk, "r+b") as handle:
        handle.write(os.urandom(4096))
    progress = EraseProgress()
    # a sysfs without discard support: the kernel's zero-out is used instead
    assert erase(disk, progress, sys_class=tmp_path) in ("zeroout", "write")
    assert progress.device == disk and progress.done == progress.total == GIB
    assert read(disk, 4096) == bytes(4096)
    interrupted = EraseProgress()
    with pytest.raises(EraseError, match="interrupted"):
        erase(disk, interrupted, sys_class=tmp_path, cancelled=lambda: True)
