"""A disk the agent wrote, driven by a real ironic, boots on its own.

A real ironic (``tests/ironic/launcher.py``, on 127.0.0.1; ``ironic_vm.py`` says how the
guest and ironic reach each other) deploys a small whole-disk image made at test time
(``disk_images.py``: a kernel and an initramfs that prints a marker line and powers off)
into a PXE-booted VM: the node is ``manual-management`` with ``fake`` power, and the
test plays the power interface. Once the node waits for its agent, the VM boots the
deploy kernel and ramdisk ironic prepared for it, with the kernel parameters ironic
wrote into its PXE config: ``ipa-api-url`` there is ironic's own ``http://127.0.0.1:PORT``
and is rewritten to the guest's ``guestfwd`` address, and the agent advertises the VM's
host forward (``ipa-advertise-host=127.0.0.1``, ``ipa-advertise-port``), which ironic
calls with TLS verified against the certificate from the heartbeat. ironic looks the
agent up, writes the image (the URL as the guest sees it), in UEFI mode has the agent
create the boot entry (``image.install_bootloader``), and ends with the agent's
``standby.power_off``: the guest powers itself off (QEMU exits, ``-no-reboot``); fake
power still says "on", so ironic forces a (fake) power off, "powers on" the instance and
reports ``active``. Then the VM starts again with the same disk (and NVRAM) and no NIC,
so no network boot, and must print the marker. Figures: deploy request to ``active``,
disk boot to the marker.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .disk_images import UEFI_LOADER_PATH, BootImage, bios_image, uefi_image
from .harness import (
    IMAGE_HOST,
    IRONIC_HOST,
    IRONIC_PORT,
    OVMF_VARS,
    VM,
    BackgroundApp,
    HarnessError,
    ImageServer,
    Ramdisk,
    Shape,
    UefiVM,
    boot_from_disk,
)
from .ironic_vm import (
    ConductorProxy,
    Deployment,
    IronicSite,
    VmNode,
    check_deployment,
    disk_boot,
    drive_deploy,
    guest_kernel_args,
    ironic_site,
    served_image,
    whole_disk_instance_info,
)
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


@pytest.fixture(scope="module")
def site(ramdisk: Ramdisk, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IronicSite]:
    """One real ironic for this module (``ironic_vm.ironic_site``)."""
    with ironic_site(ramdisk, tmp_path_factory.mktemp("ironic")) as found:
        yield found


def deploy_with_ironic(
    site: IronicSite, make_vm: Callable[[Ramdisk], VM], shape: Shape, image: BootImage
) -> tuple[VM, Deployment]:
    """Enroll the VM as a node, deploy ``image`` with ironic (the guest reaches ironic's
    API through ``guestfwd``), and check what every deploy must show."""
    with served_image(site, image) as (images, image_port):
        node = VmNode.enroll(
            site.ironic,
            shape,
            "uefi" if shape is UEFI else "bios",
            site.deploy_files_url,
            whole_disk_instance_info(image),
        )
        try:

            def booted_vm(ramdisk: Ramdisk) -> VM:
                vm: VM = make_vm(ramdisk)
                vm.guestfwds[(IMAGE_HOST, 80)] = image_port
                vm.guestfwds[(IRONIC_HOST, IRONIC_PORT)] = site.ironic.api_port
                return vm

            vm, deployment = drive_deploy(node, booted_vm)
        finally:
            node.delete()
    check_deployment(site, images, image, vm, deployment)
    return vm, deployment


def test_ironic_deploys_bios_and_the_disk_boots(
    site: IronicSite, ramdisk: Ramdisk, tmp_path: Path
) -> None:
    """SeaBIOS: a 34 MiB image with SYSLINUX in its MBR and active partition."""
    image = bios_image(ramdisk.kernel, tmp_path / "image")

    (tmp_path / "vm").mkdir()
    vm, _ = deploy_with_ironic(site, lambda deploy: VM(tmp_path / "vm", deploy, BIOS), BIOS, image)
    disk_boot(vm, image)


BDS_STARTING = re.compile(r'BdsDxe: starting Boot([0-9A-F]{4}) "')


def test_ironic_deploys_uefi_and_the_disk_boots_by_the_agents_entry(
    site: IronicSite, ramdisk: Ramdisk, tmp_path: Path
) -> None:
    """OVMF all the way: iPXE's EFI build loads ironic's deploy ramdisk, ironic has the
    agent write the image and then the boot entry (``image.install_bootloader`` through
    efivarfs), and the disk boots by that entry alone (the image has no
    EFI/BOOT/BOOTX64.EFI that firmware would find by itself)."""
    image = uefi_image(ramdisk.kernel, tmp_path / "image")

    (tmp_path / "vm").mkdir()
    vm, deployment = deploy_with_ironic(
        site, lambda deploy: UefiVM(tmp_path / "vm", deploy, UEFI), UEFI, image
    )
    assert isinstance(vm, UefiVM)
    node_uuid = deployment.node["uuid"]
    assert f"Installing the bootloader for node {node_uuid}" in deployment.ironic_log
    # The entries OVMF made for this machine on its way to the network boot.
    firmware = deployment.firmware
    assert firmware is not None and firmware.options and firmware.order, firmware
    after = boot_entries(vm.nvram.read_bytes())
    added = [option for number, option in after.options.items() if number not in firmware.options]
    assert [(o.file_path or "").lower() for o in added] == [UEFI_LOADER_PATH.lower()], added
    entry = added[0]
    assert after.order[0] == entry.number, after.order
    # OVMF's own entries are untouched and still in the boot order.
    assert {n: after.options.get(n) for n in firmware.options} == firmware.options
    assert set(firmware.order) <= set(after.order), (firmware.order, after.order)
    result = disk_boot(vm, image)
    # The firmware started the agent's entry, first.
    started = BDS_STARTING.findall(result.console)
    assert started[:1] == [f"{entry.number:04X}"], started


def test_guest_kernel_args_rewrite_only_ironics_own_url() -> None:
    ironic = "http://127.0.0.1:6000"
    params = f"text ipa-debug=1 ipa-api-url={ironic} ipa-global-request-id=req-1 BOOTIF=01-aa"
    assert guest_kernel_args(params, ironic, 4242).split() == [
        "text",
        "ipa-debug=1",
        f"ipa-api-url=http://{IRONIC_HOST}:{IRONIC_PORT}",
        "ipa-global-request-id=req-1",
        "ipa-advertise-host=127.0.0.1",
        "ipa-advertise-port=4242",
    ]
    with pytest.raises(HarnessError, match="not its own"):
        guest_kernel_args("ipa-api-url=http://192.0.2.1:6385", ironic, 1)
    with pytest.raises(HarnessError, match="no ipa-api-url"):
        guest_kernel_args("text nofb", ironic, 1)


def test_conductor_proxy_reaches_forwarded_guest_addresses_only(tmp_path: Path) -> None:
    """ironic's HEAD and GET for the guest's image address reach the host's server; any
    other address is refused by the proxy itself, which connects nowhere else."""
    (tmp_path / "image.raw").write_bytes(b"disk image bytes")
    images, proxy = ImageServer({"image.raw": tmp_path / "image.raw"}), ConductorProxy()
    with BackgroundApp(images.app) as server, BackgroundApp(proxy.app) as proxied:
        proxy.routes[(IMAGE_HOST, 80)] = server.port
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxied.port}"})
        )
        url = f"http://{IMAGE_HOST}/image.raw"
        with opener.open(urllib.request.Request(url, method="HEAD"), timeout=10) as head:
            assert head.headers["Content-Length"] == "16"
        with opener.open(url, timeout=10) as got:
            assert got.read() == b"disk image bytes"
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(f"http://{IRONIC_HOST}:{IRONIC_PORT}/v1", timeout=10)
        assert refused.value.code == 403
    assert images.requests == [("HEAD", "/image.raw"), ("GET", "/image.raw")]
    assert proxy.requests == [("HEAD", url), ("GET", url)]


def esp_of(image: Path) -> dict[str, Any]:
    """The image's first partition as sfdisk lists it (start and size in sectors, GUID)."""
    listed = subprocess.run(
        ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True
    )
    partition: dict[str, Any] = json.loads(listed.stdout)["partitiontable"]["partitions"][0]
    return partition


def test_uefi_image_boots_by_a_boot_entry_only(ramdisk: Ramdisk, tmp_path: Path):
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
    without = boot_from_disk(vm, image.marker)
    assert without.seconds_to_marker is None, without.console
    assert "Shell> " in without.console  # OVMF found nothing else to start
    esp = esp_of(vm.disk)
    path = hard_drive_file_path(
        1, esp["start"], esp["size"], uuid.UUID(esp["uuid"]), UEFI_LOADER_PATH
    )
    vm.nvram.write_bytes(with_boot_entry(vm.nvram.read_bytes(), 0x42, "tacet-marker", path))
    result = disk_boot(vm, image)
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
