"""``image.install_bootloader`` as ironic calls it after writing a whole-disk image: the
agent writes a UEFI image to a loop device, then makes boot entries in a temporary
efivars directory."""

from __future__ import annotations

import asyncio

from image.efi import EFI_GLOBAL_VARIABLE, EfiVars, FilePath
from tests.image.conftest import GIB, MIB, Served, disk_entry, make_uefi_disk
from tests.image.test_bootloader import LOADERS, expected_drive
from tests.image.test_devices import info, prepare
from tests.image.test_efi import ovmf_like, snapshot


async def written(tmp_path, loop_devices, agent_with, files, loaders=LOADERS, uefi=True):
    """An agent that has written a UEFI whole-disk image to a loop device, its efivars
    directory holding what OVMF leaves there (absent unless ``uefi``: a BIOS boot)."""
    source = tmp_path / "uefi.raw"
    make_uefi_disk(source, 32 * MIB, loaders)
    image = source.read_bytes()
    disk = loop_devices(5 * GIB)
    efivars = tmp_path / "efivars"
    if uefi:
        efivars.mkdir()
        ovmf_like(efivars)
    node = await agent_with([disk_entry(disk, 5 * GIB, "D1")], efivars_dir=efivars)
    files["uefi.raw"] = Served(image)
    result = await prepare(node, info(f"{files.base}/uefi.raw", image))
    assert result["command_status"] == "SUCCEEDED", result
    return node, disk, EfiVars(efivars)


async def ironic_params(node, boot_mode="uefi"):
    """What ironic's prepare_instance_boot sends for a whole-disk image: root_uuid is
    get_partition_uuids' "root uuid", the ESP UUID is only sent for partition images."""
    _, uuids = await node.post({"name": "standby.get_partition_uuids"})
    return {
        "root_uuid": uuids["command_result"]["root uuid"],
        "efi_system_part_uuid": None,
        "prep_boot_part_uuid": None,
        "target_boot_mode": boot_mode,
    }


async def install(node, params, wait=True):
    return await node.post({"name": "image.install_bootloader", "params": params}, wait=wait)


async def poll(node, command_id):
    for _ in range(200):
        _, listing = await node.get("/v1/commands/")
        (found,) = [c for c in listing["commands"] if c["id"] == command_id]
        if found["command_status"] != "RUNNING":
            return found
        await asyncio.sleep(0.05)
    raise AssertionError("install_bootloader still running")


async def test_uefi_entries_first_others_untouched_and_a_retry_changes_nothing(
    tmp_path, loop_devices, agent_with, files
):
    node, disk, efivars = await written(tmp_path, loop_devices, agent_with, files)
    before = snapshot(efivars.root)
    params = await ironic_params(node)
    status, started = await install(node, params, wait=False)  # ironic polls
    assert status == 200 and started["command_name"] == "install_bootloader"
    result = await poll(node, started["id"])
    assert result["command_status"] == "SUCCEEDED", result
    out = result["command_result"]
    assert out["boot_mode"] == "uefi" and out["device"] == disk
    assert out["entries"] == [
        {
            "boot_number": "0003",
            "description": "debian",
            "loader": "\\EFI\\debian\\shimx64.efi",
            "created": True,
        }
    ]
    assert out["boot_order"] == ["0003", "0001", "0000", "0002"]
    option = efivars.boot_options()[3]
    assert option is not None
    assert option.device_path == (expected_drive(disk), FilePath("\\EFI\\debian\\shimx64.efi"))
    after = snapshot(efivars.root)
    assert {name for name in after if before.get(name) != after[name]} == {
        f"Boot0003-{EFI_GLOBAL_VARIABLE}",
        f"BootOrder-{EFI_GLOBAL_VARIABLE}",
    }
    _, again = await install(node, params, wait=True)
    assert again["command_status"] == "SUCCEEDED", again
    assert again["command_result"]["entries"][0]["created"] is False
    assert snapshot(efivars.root) == after


async def test_ironic_retry_without_target_boot_mode_uses_the_agents_own_mode(
    tmp_path, loop_devices, agent_with, files
):
    # ironic repeats the call without target_boot_mode when the first one is refused.
    node, _, efivars = await written(tmp_path, loop_devices, agent_with, files)
    params = await ironic_params(node)
    del params["target_boot_mode"]
    _, result = await install(node, params)
    assert result["command_status"] == "SUCCEEDED", result
    assert efivars.boot_order()[0] == 3


async def test_bios_mode_needs_nothing_for_a_whole_disk_image(
    tmp_path, loop_devices, agent_with, files
):
    node, _, efivars = await written(tmp_path, loop_devices, agent_with, files)
    before = snapshot(efivars.root)
    _, result = await install(node, await ironic_params(node, "bios"))
    assert result["command_status"] == "SUCCEEDED", result
    assert result["command_result"]["boot_mode"] == "bios"
    assert "nothing to do" in result["command_result"]["result"]
    assert snapshot(efivars.root) == before


async def test_a_partition_images_root_uuid_is_refused_with_400(
    tmp_path, loop_devices, agent_with, files
):
    node, _, efivars = await written(tmp_path, loop_devices, agent_with, files)
    _, uuids = await node.post({"name": "standby.get_partition_uuids"})
    root_partition = uuids["command_result"]["partitions"][f"{node.agent.written_disk}p2"]
    before = snapshot(efivars.root)
    status, body = await install(
        node, {"root_uuid": root_partition, "target_boot_mode": "uefi"}, wait=True
    )
    assert status == 400
    assert "partition images are not supported" in body["faultstring"]
    assert snapshot(efivars.root) == before


async def test_an_image_without_loaders_fails_unless_failures_are_ignored(
    tmp_path, loop_devices, agent_with, files
):
    node, _, efivars = await written(
        tmp_path, loop_devices, agent_with, files, {"EFI/debian/notes.txt": b"none"}
    )
    before = snapshot(efivars.root)
    params = await ironic_params(node)
    _, result = await install(node, params)
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["code"] == 400
    assert "no boot loader on the EFI system partition" in result["command_error"]["message"]
    _, ignored = await install(node, {**params, "ignore_bootloader_failure": True})
    assert ignored["command_status"] == "SUCCEEDED", ignored
    assert "ignored as asked" in ignored["command_result"]["result"]
    assert snapshot(efivars.root) == before


async def test_uefi_asked_of_a_machine_booted_in_bios_mode_fails_clearly(
    tmp_path, loop_devices, agent_with, files
):
    node, _, efivars = await written(tmp_path, loop_devices, agent_with, files, uefi=False)
    _, result = await install(node, await ironic_params(node))
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["code"] == 409
    assert "this machine was not booted in UEFI mode" in result["command_error"]["message"]
    assert not efivars.root.exists()
