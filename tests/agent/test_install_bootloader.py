"""``image.install_bootloader`` before any image was written: registered, its parameters
checked as ironic sends them, the boot mode and ``ignore_bootloader_failure`` obeyed.
(With an image written to a loop device: tests/image/test_install_bootloader.py.)"""

from __future__ import annotations

import pytest

from agent.config import load_config
from tests.agent.conftest import start

IRONIC_WHOLE_DISK = {
    "root_uuid": None,
    "efi_system_part_uuid": None,
    "prep_boot_part_uuid": None,
    "target_boot_mode": "uefi",
}


@pytest.fixture
async def agent_at(tmp_path):
    runs = []

    async def make(efivars_present: bool):
        efivars = tmp_path / "efivars"
        if efivars_present:
            efivars.mkdir(exist_ok=True)
        run = await start(tmp_path / f"state{len(runs)}", efivars_dir=efivars)
        runs.append(run)
        return run

    yield make
    for run in runs:
        await run.client.close()
        await run.server.stop("test finished")


async def install(run, params):
    return await run.post({"name": "image.install_bootloader", "params": params}, wait=True)


async def test_uefi_without_a_written_image_fails_409(agent_at):
    run = await agent_at(efivars_present=True)
    status, result = await install(run, IRONIC_WHOLE_DISK)
    assert status == 200
    assert result["command_name"] == "install_bootloader"
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["code"] == 409
    assert "no image has been written yet" in result["command_error"]["message"]


async def test_ignore_bootloader_failure_turns_a_failure_into_success(agent_at):
    run = await agent_at(efivars_present=True)
    _, result = await install(run, {**IRONIC_WHOLE_DISK, "ignore_bootloader_failure": True})
    assert result["command_status"] == "SUCCEEDED", result
    assert "ignored as asked" in result["command_result"]["result"]
    assert "no image has been written yet" in result["command_result"]["result"]


async def test_bios_with_a_whole_disk_image_is_nothing_to_do(agent_at):
    run = await agent_at(efivars_present=True)
    _, result = await install(run, {**IRONIC_WHOLE_DISK, "target_boot_mode": "bios"})
    assert result["command_status"] == "SUCCEEDED", result
    assert result["command_result"]["boot_mode"] == "bios"
    assert result["command_result"]["result"].startswith("install_bootloader: BIOS boot mode")


@pytest.mark.parametrize(("efivars_present", "status"), [(False, "SUCCEEDED"), (True, "FAILED")])
async def test_without_target_boot_mode_the_agents_boot_mode_decides(
    agent_at, efivars_present, status
):
    # ironic's retry leaves target_boot_mode out: no efivars means BIOS (nothing to do),
    # efivars mean UEFI (which needs the image this agent has not written).
    run = await agent_at(efivars_present)
    params = {k: v for k, v in IRONIC_WHOLE_DISK.items() if k != "target_boot_mode"}
    _, result = await install(run, params)
    assert result["command_status"] == status, result


async def test_a_root_uuid_with_no_image_written_cannot_be_told_apart(agent_at):
    run = await agent_at(efivars_present=False)
    params = {**IRONIC_WHOLE_DISK, "root_uuid": "0fc63daf-8483-4772-8e79-3d69d8477de4"}
    _, result = await install(run, {**params, "target_boot_mode": "bios"})
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["code"] == 409
    _, result = await install(run, {**params, "root_uuid": "0x00000000"})
    assert result["command_status"] == "FAILED"  # UEFI needs the image's disk
    assert result["command_error"]["code"] == 409


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"target_boot_mode": "legacy"}, "target_boot_mode must be one of bios, uefi"),
        ({"target_boot_mode": "uefi", "prep_boot_part_uuid": "x"}, "PReP boot partitions"),
        ({"target_boot_mode": "uefi", "software_raid": True}, "unexpected parameter"),
        ({"target_boot_mode": "uefi", "ignore_bootloader_failure": "yes"}, "a boolean"),
        ({"root_uuid": 7}, "root_uuid must be a string"),
    ],
)
async def test_bad_parameters_are_refused_on_the_request(agent_at, params, message):
    run = await agent_at(efivars_present=True)
    status, body = await install(run, params)
    assert status == 400
    assert message in body["faultstring"]


def test_the_efivars_directory_is_a_setting(tmp_path):
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"tacet.efivars-dir={tmp_path}/vars")
    config = load_config(cmdline, tmp_path / "etc", tmp_path / "state")
    assert str(config.efivars_dir) == f"{tmp_path}/vars"
    cmdline.write_text("")
    assert str(load_config(cmdline, tmp_path / "etc").efivars_dir) == "/sys/firmware/efi/efivars"
