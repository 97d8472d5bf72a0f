"""A disk the agent wrote boots on its own.

The agent in the PXE-booted ramdisk writes a small whole-disk image (tests/e2e/
disk_images.py: a kernel and an initramfs that prints a marker line and powers off),
and for UEFI creates the firmware's boot entry; then the VM starts again with the same
disk (and NVRAM) and no NIC, so no network boot, and must print the marker. Figures:
firmware start to the agent's first answer, the deployment, disk boot to the marker.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import struct
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from conductor import pki

from .conftest import NODE
from .disk_images import UEFI_LOADER_PATH, BootImage, bios_image, uefi_image
from .harness import (
    IMAGE_HOST,
    OVMF_VARS,
    VM,
    AgentClient,
    BackgroundApp,
    DiskBoot,
    ImageServer,
    Ramdisk,
    Shape,
    UefiVM,
    boot_from_disk,
    report,
)
from .test_ramdisk import boot, mtls_context
from .uefi_vars import (
    GLOBAL_VARIABLE,
    VARIABLE_HEADER,
    BootEntries,
    VarStoreError,
    boot_entries,
    hard_drive_file_path,
    with_boot_entry,
)

pytestmark = pytest.mark.e2e

BIOS = Shape(
    "seabios-pc",
    mac="52:54:00:7a:e2:31",
    disk_serial="TCE2EBIOS01",
    system_serial="SYS-E2E-BIOS",
    uuid="7ac0e2e0-7ac0-4ac0-8ac0-7ac0000000e4",
)
UEFI = Shape(
    "ovmf-q35",
    machine="q35",
    mac="52:54:00:7a:e2:41",
    disk_serial="TCE2EUEFI01",
    system_serial="SYS-E2E-UEFI",
    uuid="7ac0e2e0-7ac0-4ac0-8ac0-7ac0000000e5",
)


async def succeeded(client: AgentClient, name: str, params: dict[str, Any]) -> Any:
    """Run a command to its end; its result, once it has succeeded."""
    status, result = await client.command(name, params)
    assert status == 200, (name, result)
    if result["command_status"] == "RUNNING":
        result = await client.wait_command(result["id"], 600)
    assert result["command_status"] == "SUCCEEDED", (name, result)
    return result["command_result"]


async def deploy(client: AgentClient, shape: Shape, image: BootImage) -> None:
    """The conductor's node data (the root device hint: the VM's 2 GiB disk is below
    the default minimum size), then prepare_image of the image from the host's server."""
    node_info = {
        "node": {
            "uuid": shape.uuid,
            "properties": {"root_device": {"serial": shape.disk_serial}},
            "instance_info": {},
        },
        "config": {},
    }
    await succeeded(client, "poll.set_node_info", {"node_info": node_info})
    image_info = {
        "id": f"e2e-{shape.name}",
        "urls": [f"http://{IMAGE_HOST}/{image.path.name}"],
        "disk_format": "raw",
        "os_hash_algo": "sha256",
        "os_hash_value": image.sha256,
    }
    started = time.monotonic()
    await succeeded(client, "standby.prepare_image", {"image_info": image_info})
    seconds, mib = time.monotonic() - started, image.path.stat().st_size / 1024 / 1024
    report(f"{shape.name}: deploy ({mib:.0f} MiB whole-disk image)", f"{seconds:.1f} s")


async def power_off(vm: VM, client: AgentClient) -> None:
    status, result = await client.command("standby.power_off")
    assert status == 200, result
    await asyncio.get_running_loop().run_in_executor(None, vm.wait_exit, 120)


async def disk_boot(vm: VM, image: BootImage) -> DiskBoot:
    """The VM from its disk (``boot_from_disk``); the marker must be on the console and
    QEMU must exit cleanly (the image powers off)."""
    result = await asyncio.get_running_loop().run_in_executor(
        None, boot_from_disk, vm, image.marker
    )
    tail = "\n".join(result.console.splitlines()[-30:])
    assert result.seconds_to_marker is not None, f"no marker from the disk; console:\n{tail}"
    report(
        f"{vm.shape.name}: disk boot (QEMU start) -> marker", f"{result.seconds_to_marker:.1f} s"
    )
    assert result.exit_code == 0, tail
    assert "iPXE" not in result.console and "PXE" not in result.console  # no network boot
    return result


def client_for(pki_dir: Path) -> Any:
    return lambda port: AgentClient(port, mtls_context(pki_dir), server_hostname=NODE)


async def test_bios_disk_boots(
    ramdisk: Ramdisk, pki_dir: Path, bundle: pki.NodeBundle, tmp_path: Path
):
    image = bios_image(ramdisk.kernel, tmp_path / "image")
    images = ImageServer({image.path.name: image.path})
    vm = VM(tmp_path / "vm", ramdisk, BIOS, secrets=bundle.cpio())
    vm.workdir.mkdir()
    with BackgroundApp(images.app) as server:
        vm.guestfwds[(IMAGE_HOST, 80)] = server.port
        try:
            booted = await asyncio.get_running_loop().run_in_executor(
                None, boot, vm, client_for(pki_dir)
            )
            await deploy(booted.client, BIOS, image)
            await power_off(vm, booted.client)
        finally:
            vm.stop()
    await disk_boot(vm, image)


BDS_STARTING = re.compile(r'BdsDxe: starting Boot([0-9A-F]{4}) "')


async def test_uefi_disk_boots(
    ramdisk: Ramdisk, pki_dir: Path, bundle: pki.NodeBundle, tmp_path: Path
):
    """OVMF all the way: iPXE's EFI build loads the ramdisk, the agent writes the image
    and the boot entry through efivarfs, and the disk boots by that entry alone (the
    image has no EFI/BOOT/BOOTX64.EFI that firmware would find by itself)."""
    image = uefi_image(ramdisk.kernel, tmp_path / "image")
    images = ImageServer({image.path.name: image.path})
    vm = UefiVM(tmp_path / "vm", ramdisk, UEFI, secrets=bundle.cpio())
    vm.workdir.mkdir()
    with BackgroundApp(images.app) as server:
        vm.guestfwds[(IMAGE_HOST, 80)] = server.port
        try:
            booted = await asyncio.get_running_loop().run_in_executor(
                None, boot, vm, client_for(pki_dir)
            )
            client = booted.client
            inventory = await succeeded(client, "poll.get_hardware_info", {})
            assert inventory["boot"]["current_boot_mode"] == "uefi", inventory["boot"]
            # The entries OVMF made for this machine on its way to the network boot.
            firmware = boot_entries(vm.nvram.read_bytes())
            assert firmware.options and firmware.order, firmware
            await deploy(client, UEFI, image)
            uuids = await succeeded(client, "standby.get_partition_uuids", {})
            assert uuids["efi system partition uuid"], uuids
            # What ironic sends for a whole-disk image in UEFI mode.
            await succeeded(
                client,
                "image.install_bootloader",
                {
                    "root_uuid": uuids["root uuid"],
                    "efi_system_part_uuid": uuids["efi system partition uuid"],
                    "target_boot_mode": "uefi",
                },
            )
            await power_off(vm, client)
        finally:
            vm.stop()
    after = boot_entries(vm.nvram.read_bytes())
    added = [option for number, option in after.options.items() if number not in firmware.options]
    assert [(o.file_path or "").lower() for o in added] == [UEFI_LOADER_PATH.lower()], added
    entry = added[0]
    assert after.order[0] == entry.number, after.order
    # OVMF's own entries are untouched and still in the boot order.
    assert {n: after.options.get(n) for n in firmware.options} == firmware.options
    assert set(firmware.order) <= set(after.order), (firmware.order, after.order)
    result = await disk_boot(vm, image)
    # The firmware started the agent's entry, first.
    started = BDS_STARTING.findall(result.console)
    assert started[:1] == [f"{entry.number:04X}"], started


def esp_of(image: Path) -> dict[str, Any]:
    """The image's first partition as sfdisk lists it (start and size in sectors, GUID)."""
    listed = subprocess.run(
        ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True
    )
    partition: dict[str, Any] = json.loads(listed.stdout)["partitiontable"]["partitions"][0]
    return partition


async def test_uefi_image_boots_by_a_boot_entry_only(ramdisk: Ramdisk, tmp_path: Path):
    """The UEFI test image and the disk boot without the agent: with OVMF's own entries
    the disk does not boot (so the UEFI test needs the agent's entry); with an entry the
    way efibootmgr writes it, added to the NVRAM file on the host, it does."""
    image = uefi_image(ramdisk.kernel, tmp_path / "image")
    vm = UefiVM(tmp_path / "vm", ramdisk, UEFI)
    vm.workdir.mkdir()
    shutil.copyfile(image.path, vm.disk)
    with vm.disk.open("r+b") as disk:
        disk.truncate(UEFI.disk_bytes)
    shutil.copyfile(OVMF_VARS, vm.nvram)
    loop = asyncio.get_running_loop()
    without = await loop.run_in_executor(None, boot_from_disk, vm, image.marker)
    assert without.seconds_to_marker is None, without.console
    assert "Shell> " in without.console  # OVMF found nothing else to start
    esp = esp_of(vm.disk)
    path = hard_drive_file_path(
        1, esp["start"], esp["size"], uuid.UUID(esp["uuid"]), UEFI_LOADER_PATH
    )
    vm.nvram.write_bytes(with_boot_entry(vm.nvram.read_bytes(), 0x42, "tacet-marker", path))
    result = await disk_boot(vm, image)
    assert BDS_STARTING.findall(result.console)[:1] == ["0042"], result.console


def _variable(name: str, data: bytes, state: int = 0x3F) -> bytes:
    encoded = (name + "\0").encode("utf-16-le")
    header = VARIABLE_HEADER.pack(
        0x55AA, state, 7, 0, bytes(16), 0, len(encoded), len(data), GLOBAL_VARIABLE.bytes_le
    )
    body = header + encoded + data
    return body + bytes(-len(body) % 4)


def _load_option(description: str, path: str) -> bytes:
    name = (path + "\0").encode("utf-16-le")
    device_path = struct.pack("<BBH", 4, 4, 4 + len(name)) + name + b"\x7f\xff\x04\x00"
    encoded = (description + "\0").encode("utf-16-le")
    return struct.pack("<IH", 1, len(device_path)) + encoded + device_path + b"extra"


def test_uefi_vars_reads_boot_entries():
    """The NVRAM reader the UEFI test relies on: live variables only, paths, order."""
    volume = bytearray(72)  # firmware volume header (HeaderLength 72) ...
    volume[40:44] = b"_FVH"
    volume[48:50] = struct.pack("<H", 72)
    store = bytes(volume) + bytes(28)  # ... and the variable store header
    store += _variable("Boot0003", _load_option("old", "\\EFI\\old\\a.efi"), state=0x3C)
    store += _variable("Boot0003", _load_option("tacet", "\\EFI\\tacet-marker\\marker.efi"))
    store += _variable("BootOrder", struct.pack("<2H", 3, 0))
    store += _variable("Boot0000", _load_option("UiApp", "\\x.efi"))
    entries = boot_entries(store + b"\xff" * 64)
    assert entries.order == [3, 0]
    assert sorted(entries.options) == [0, 3]
    assert entries.options[3].description == "tacet"
    assert entries.options[3].file_path == "\\EFI\\tacet-marker\\marker.efi"
    assert entries.options[3].optional_data == b"extra"
    # An entry added the way EDK II updates a variable: the old BootOrder is dead.
    path = hard_drive_file_path(1, 2048, 81920, GLOBAL_VARIABLE, "\\EFI\\x\\y.efi")
    updated = boot_entries(with_boot_entry(store + b"\xff" * 4096, 0x42, "new", path))
    assert updated.order == [0x42, 3, 0]
    assert updated.options[0x42].file_path == "\\EFI\\x\\y.efi"
    assert updated.options[3] == entries.options[3]
    # OVMF as shipped: a store with no variable in it.
    assert boot_entries(OVMF_VARS.read_bytes()) == BootEntries({}, [])
    with pytest.raises(VarStoreError):
        boot_entries(bytes(4096))
