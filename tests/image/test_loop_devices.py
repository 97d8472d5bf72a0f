"""Loop devices are disks only when the agent is told so (allow-loop-devices)."""

from __future__ import annotations

import hashlib
import os

from agent.config import Config
from agent.daemon import live_inventory
from tests.image.conftest import GIB, MIB, Served, disk_entry, read


def test_live_inventory_lists_attached_loop_devices_only_when_allowed(loop_devices, tmp_path):
    device = loop_devices(5 * GIB)
    config = Config(state_dir=tmp_path / "state")
    refused = [d["name"] for d in live_inventory(config)()["disks"] or []]
    assert device not in refused
    allowed = live_inventory(Config(state_dir=tmp_path / "state", allow_loop_devices=True))()
    (entry,) = [d for d in allowed["disks"] or [] if d["name"] == device]
    assert entry["size"] == 5 * GIB


async def test_a_loop_device_is_not_written_without_the_opt_in(
    loop_devices, agent_with, files, tmp_path
):
    disk = loop_devices(5 * GIB)
    with open(disk, "r+b") as handle:
        handle.write(b"BEFORE")
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")], allow_loop_devices=False)
    data = os.urandom(MIB)
    files["disk.raw"] = Served(data)
    info = {
        "id": "img",
        "urls": [f"{files.base}/disk.raw"],
        "os_hash_algo": "sha256",
        "os_hash_value": hashlib.sha256(data).hexdigest(),
    }
    _, result = await node.post(
        {"name": "standby.prepare_image", "params": {"image_info": info}}, wait=True
    )
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["code"] == 409
    assert "loop device (set allow-loop-devices" in result["command_error"]["message"]
    assert read(disk, 6) == b"BEFORE"
    assert files["disk.raw"].requests == 0


async def test_erase_skips_loop_devices_without_the_opt_in(loop_devices, agent_with):
    disk = loop_devices(5 * GIB)
    with open(disk, "r+b") as handle:
        handle.write(b"BEFORE")
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")], allow_loop_devices=False)
    params = {"step": {"step": "erase_devices_metadata", "interface": "deploy"}, "node": {}}
    _, result = await node.post({"name": "clean.execute_clean_step", "params": params}, wait=True)
    assert result["command_status"] == "SUCCEEDED", result
    assert result["command_result"]["clean_result"] == {"erased": {}, "skipped": [disk]}
    assert read(disk, 6) == b"BEFORE"


def test_named_loop_devices_are_the_only_ones_listed(loop_devices, tmp_path):
    """``allow-loop-devices=loopN``: a test or a trial sees its own loop device, not every
    one attached on the machine (whose erase steps would wipe them all)."""
    mine, other = loop_devices(5 * GIB), loop_devices(5 * GIB)
    config = Config(state_dir=tmp_path / "state", allow_loop_devices=(mine,))
    names = [d["name"] for d in live_inventory(config)()["disks"] or []]
    assert mine in names
    assert other not in names
    by_short_name = Config(
        state_dir=tmp_path / "state", allow_loop_devices=(mine.removeprefix("/dev/"),)
    )
    assert mine in [d["name"] for d in live_inventory(by_short_name)()["disks"] or []]
