"""Passive mode under a real ironic, with the ramdisk PXE-booted in QEMU.

ironic 39 with Tacet's plugin (``tests/ironic/passive.py``: ``tacet-pxe`` boot,
``tacet-passive`` deploy, ``[api] enable_ramdisk_endpoints = False``, a poll every 2 s)
takes one VM through inspection, automated cleaning and a deploy; the written disk then
boots on its own. The test plays ironic's ``fake`` power interface as in
``test_disk_boots.py``: when ironic waits for the agent it boots the VM with the deploy
kernel and ramdisk ironic prepared and the kernel parameters of the PXE config ironic
wrote (no call-back URL in them, the agent token ironic pregenerated), and when ironic is
done with a boot it stops the VM, unless the agent's ``standby.power_off`` already
powered it off.

The guest has no way to ironic: its QEMU network is ``restrict=on`` and has no
``guestfwd`` to ironic's API, only to the boot server and the image server. ironic's
plugin polls the agent through the VM's host forward, ``127.0.0.1:<port>`` in
``driver_info/tacet_address``: the agent's self-signed certificate carries 127.0.0.1
among its IP SANs, the plugin checks its token binding at first contact, and ironic's
own agent client then verifies every TLS connection against that certificate, host
name included.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ironic.passive import PASSIVE_OVERRIDES, ramdisk_endpoint_answer

from .disk_images import bios_image
from .harness import (
    BOOT_HOST,
    IMAGE_HOST,
    IRONIC_HOST,
    IRONIC_PORT,
    VM,
    HarnessError,
    Ramdisk,
    Shape,
    guest_flows,
    report,
)
from .ironic_vm import (
    Boot,
    IronicSite,
    VmNode,
    check_deployment,
    disk_boot,
    drive_boot,
    drive_deploy,
    ironic_site,
    passive_guest_kernel_args,
    served_image,
    whole_disk_instance_info,
)

pytestmark = pytest.mark.e2e

PASSIVE_BIOS = Shape(
    "passive-seabios-pc",
    mac="52:54:00:7a:e2:51",
    disk_serial="TCE2EPASV01",
    system_serial="SYS-E2E-PASSIVE",
    uuid="7ac0e2e0-7ac0-4ac0-8ac0-7ac0000000e6",
)
# DHCP (iPXE, then systemd-networkd; DHCPv6 to its multicast group) and iPXE's TFTP.
BOOT_UDP = {("255.255.255.255", 67), ("10.0.2.2", 67), ("10.0.2.2", 69), ("ff02::1:2", 547)}
RAMDISK_ENDPOINTS = ("/v1/lookup", "/v1/heartbeat/", "/v1/continue_inspection")


@pytest.fixture(scope="module")
def passive_site(
    ramdisk: Ramdisk, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IronicSite]:
    """An ironic of its own: the ramdisk endpoints off, the plugin's interfaces on."""
    with ironic_site(ramdisk, tmp_path_factory.mktemp("ironic"), PASSIVE_OVERRIDES) as found:
        yield found


def guest_connections(vm: VM) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """(TCP, UDP) destinations the guest opened in this boot, from QEMU's capture."""
    flows = guest_flows(vm.pcap, vm.shape.mac)
    return (
        {(f.dst, f.dport) for f in flows if f.proto == "tcp"},
        {(f.dst, f.dport) for f in flows if f.proto == "udp"},
    )


def ramdisk_requests(ironic_log: str) -> list[str]:
    """The lines of ironic's API log (``ironic.api``) for one of its ramdisk endpoints."""
    return [
        line
        for line in ironic_log.splitlines()
        if " ironic.api " in line and any(f" {path}" in line for path in RAMDISK_ENDPOINTS)
    ]


def agent_token(vm: VM) -> str:
    return vm.kernel_args.split("ipa-agent-token=", 1)[1].split()[0]


def check_passive_boot(
    boot: Boot, vm: VM, site: IronicSite, tcp_allowed: set[tuple[str, int]]
) -> None:
    """The agent ran passive, with no URL of ironic's, and the guest had no way to
    ironic and opened no connection but the allowed ones."""
    assert boot.banner_mode == "passive", boot.console[-2000:]
    # tacet-pxe puts a token in the boot configuration in token-binding trust only: the
    # plugin then checked the agent's binding of its certificate to it at first contact.
    assert "ipa-api-url" not in vm.kernel_args and "ipa-agent-token=" in vm.kernel_args
    assert (IRONIC_HOST, IRONIC_PORT) not in vm.guestfwds
    assert site.ironic.api_port not in vm.guestfwds.values(), vm.guestfwds
    tcp, udp = guest_connections(vm)
    assert tcp <= tcp_allowed and (BOOT_HOST, 80) in tcp, tcp
    assert udp <= BOOT_UDP, udp


def test_ironic_inspects_cleans_and_deploys_a_passive_vm_and_the_disk_boots(
    passive_site: IronicSite, ramdisk: Ramdisk, tmp_path: Path
) -> None:
    """One VM, three network boots (inspect, clean, deploy) and one from its disk."""
    site = passive_site
    shape = PASSIVE_BIOS
    image = bios_image(ramdisk.kernel, tmp_path / "image")
    (tmp_path / "vm").mkdir()
    boot_only = {(BOOT_HOST, 80)}
    with served_image(site, image) as (images, image_port):
        node = VmNode.enroll(
            site.ironic,
            shape,
            "bios",
            site.deploy_files_url,
            whole_disk_instance_info(image),
            passive=True,
            automated_clean=True,
        )

        def passive_vm(deploy: Ramdisk) -> VM:
            """The VM for each boot: the same disk, the same forward, no way to ironic."""
            vm = VM(tmp_path / "vm", deploy, shape)
            vm.guestfwds[(IMAGE_HOST, 80)] = image_port
            return vm

        try:
            inspected, inspection = drive_boot(
                node, passive_vm, "inspect", "inspect wait", "manageable", False
            )
            check_passive_boot(inspection, inspected, site, boot_only)
            inventory = node.api.get(f"/v1/nodes/{node.uuid}/inventory")["inventory"]
            assert [i["mac_address"] for i in inventory["interfaces"]] == [shape.mac]
            assert [d["serial"] for d in inventory["disks"]] == [shape.disk_serial]
            assert inventory["system_vendor"]["serial_number"] == shape.system_serial

            # Old data that metadata cleaning must wipe (the VM is off).
            with inspected.disk.open("r+b") as old:
                old.write(b"\x55\xaa" * 256)
            cleaned, cleaning = drive_boot(
                node, passive_vm, "provide", "clean wait", "available", False
            )
            check_passive_boot(cleaning, cleaned, site, boot_only)
            with cleaned.disk.open("rb") as wiped:
                assert wiped.read(512) == bytes(512)
            assert "Executing {'step': 'erase_devices_metadata'" in cleaning.ironic_log

            vm, deployment = drive_deploy(node, passive_vm)
            check_passive_boot(deployment, vm, site, boot_only | {(IMAGE_HOST, 80)})
        finally:
            node.delete()
    check_deployment(site, images, image, vm, deployment)
    report(f"{shape.name}: passive inspect -> manageable", f"{inspection.seconds:.1f} s")
    report(f"{shape.name}: passive provide (cleaning) -> available", f"{cleaning.seconds:.1f} s")
    # Every boot had a token of its own and served a certificate of its own.
    boots = (inspected, cleaned, vm)
    assert len({agent_token(booted) for booted in boots}) == 3
    assert len({b.banner_fingerprint for b in (inspection, cleaning, deployment)}) == 3
    # ironic's API saw none of its ramdisk endpoints, though its log shows them:
    assert ramdisk_requests(site.ironic.log_text()) == []
    assert ramdisk_endpoint_answer(site.ironic, f"/v1/lookup?addresses={shape.mac}", None) == 403
    assert len(ramdisk_requests(site.ironic.log_text())) == 1
    disk_boot(vm, image)


def test_passive_guest_kernel_args_keep_ironics_and_refuse_a_call_back() -> None:
    params = "text ipa-debug=1 ipa-agent-token=tok ipa-global-request-id=req-1 BOOTIF=01-aa"
    assert passive_guest_kernel_args(params).split() == [
        "text",
        "ipa-debug=1",
        "ipa-agent-token=tok",
        "ipa-global-request-id=req-1",
    ]
    for call_back in ("ipa-api-url", "ipa-inspection-callback-url"):
        with pytest.raises(HarnessError, match="the passive boot names ironic"):
            passive_guest_kernel_args(f"text {call_back}=http://127.0.0.1:6385")
