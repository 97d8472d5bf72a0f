"""A whole-disk deploy by a real ironic in UEFI mode, through ``image.install_bootloader``.

For a whole-disk image in UEFI mode ironic calls the agent's ``image.install_bootloader``
after writing the image; the agent finds the image's EFI system partition and its loader
and adds a ``Boot####`` entry, first in ``BootOrder``. The local agent writes its UEFI
variables into a directory of the test (the ``efivars-dir`` setting), never the host's.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from .conftest import Images, report
from .images import EXPECTED_LOADER, UefiImage, boot_entries, build_uefi_image
from .machine import Machine


@pytest.fixture(scope="module")
def uefi_image(images: Images, tmp_path_factory: pytest.TempPathFactory) -> UefiImage:
    built = build_uefi_image(tmp_path_factory.mktemp("uefi-image"))
    images.server.files["uefi.raw"] = built.path
    qcow2 = built.path.with_suffix(".qcow2")
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(built.path), str(qcow2)],
        check=True,
    )
    images.server.files["uefi.qcow2"] = qcow2
    return built


@pytest.mark.parametrize("disk_format", ["raw", "qcow2"])
def test_deploy_whole_disk_image_uefi(
    machine: Machine, images: Images, uefi_image: UefiImage, tmp_path: Path, disk_format: str
) -> None:
    efivars = tmp_path / "efivars"
    efivars.mkdir()
    served = uefi_image.path.with_suffix(f".{disk_format}")
    machine.enroll(
        boot_mode="uefi",
        instance_info={
            "image_source": images.url(served.name),
            "image_os_hash_algo": "sha256",
            "image_os_hash_value": hashlib.sha256(served.read_bytes()).hexdigest(),
            "image_disk_format": disk_format,
        },
    )
    machine.provide()

    node, seconds = machine.deploy(settings={"efivars-dir": str(efivars)})

    assert node["provision_state"] == "active", node.get("last_error")
    report(
        f"UEFI deploy of a 32 MiB {disk_format} image with an ESP, deploy to active",
        f"{seconds:.1f} s",
    )
    image = uefi_image.path.read_bytes()
    for offset, length in (uefi_image.esp, uefi_image.root):
        written = machine.disk.read(offset, length)
        assert (
            hashlib.sha256(written).digest()
            == hashlib.sha256(image[offset : offset + length]).digest()
        )
    entries, order = boot_entries(efivars)
    wanted = "\\" + EXPECTED_LOADER.replace("/", "\\")
    mine = [e for e in entries if any(p.lower() == wanted.lower() for p in e.file_paths)]
    assert mine, f"no Boot#### entry for {wanted} in {efivars}: {entries}"
    assert order and order[0] == mine[0].number
    # ironic asked for it (agent_client.install_bootloader after writing the image).
    assert f"Installing the bootloader for node {node['uuid']}" in machine.ironic.log_text()
