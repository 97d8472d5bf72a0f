"""Automated cleaning by a real ironic: the agent's ``erase_devices_metadata`` step.

ironic.conf sets ``[deploy] erase_devices_priority = 0`` (metadata cleaning only, see
launcher.METADATA_CLEANING), so ``provide`` runs the agent's metadata step (priority 99)
and the node ends ``available``. The disk starts out used: a partition table, an ext4
file system, and data in the middle of the partition that metadata cleaning must leave.
"""

from __future__ import annotations

from .conftest import Images
from .machine import Machine

MIB = 1024 * 1024
DATA = b"data in the middle of a partition: metadata cleaning leaves it\n" * 64


def test_automated_cleaning_erases_metadata_only(machine: Machine, images: Images) -> None:
    disk = machine.disk
    disk.write(0, images.raw_bytes)  # MBR + ext4 at 1 MiB
    middle = len(images.raw_bytes) // 2
    disk.write(middle, DATA)
    disk.write(disk.size - MIB, b"\xff" * MIB)  # where a backup GPT would be
    assert disk.read(510, 2) == b"\x55\xaa"

    machine.enroll(automated_clean=True)
    node = machine.provide()

    assert node["provision_state"] == "available"
    assert node["last_error"] is None
    assert disk.read(0, MIB) == bytes(MIB)  # the partition table
    assert disk.read(MIB, MIB) == bytes(MIB)  # the ext4 superblock: the partition's first MiB
    assert disk.read(disk.size - MIB, MIB) == bytes(MIB)
    assert disk.read(middle, len(DATA)) == DATA
    (agent,) = machine.agents
    log = agent.log_text()
    # The agent saw one disk (node.ONE_DISK_VIEW) and erased that one only.
    assert log.count("erase_devices_metadata: erasing ") == 1
    assert f"erase_devices_metadata: erasing {disk.device}" in log
    assert "erase_devices: erasing" not in log
