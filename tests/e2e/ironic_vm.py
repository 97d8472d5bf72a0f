"""A real ironic on 127.0.0.1 drives the ramdisk PXE-booted in a QEMU guest.

ironic (``tests/ironic/launcher.py``) and the guest live on two networks: the host's
loopback and QEMU's user network (``restrict=on``). Three bridges join them, each the way
a deployment behind NAT would be set up:

- the guest reaches ironic's API through ``guestfwd`` (``http://10.0.2.101:6385``):
  ironic's own URL is ``http://127.0.0.1:PORT``, so ``ipa-api-url`` in the kernel
  parameters ironic wrote for the node is rewritten to that address
  (:func:`guest_kernel_args`);
- ironic reaches the agent through the VM's host forward: the agent advertises
  ``https://127.0.0.1:<forwarded port>`` (``ipa-advertise-host``/``ipa-advertise-port``)
  instead of its own 10.0.2.15, which the host cannot reach. ironic verifies the agent's
  TLS against the certificate from its heartbeat, host name included; the agent's
  certificate carries 127.0.0.1 among its IP SANs (always, and as the advertised host);
- ironic checks the image URL the guest will download (a HEAD request before the deploy)
  through :class:`ConductorProxy`, an HTTP proxy that forwards requests for the guest's
  ``guestfwd`` addresses to the same host servers the guest reaches, and refuses any
  other address: the instance's ``image_source`` is the URL as the guest sees it.

ironic's power interface is ``fake``: the test plays it. It starts the VM once the node
waits for its agent, and the VM powers itself off when the agent runs ironic's
``standby.power_off``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.ironic.launcher import FAILURE_STATES, IronicApi, IronicError, IronicService
from tests.ironic.node import ramdisk_cmdline

from .harness import (
    IRONIC_HOST,
    IRONIC_PORT,
    VM,
    HarnessError,
    Ramdisk,
    Shape,
    UefiVM,
    fingerprint,
    free_port,
)
from .uefi_vars import BootEntries, boot_entries

GUEST_IRONIC_URL = f"http://{IRONIC_HOST}:{IRONIC_PORT}"
# Headers that belong to one connection, not to the message a proxy passes on.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
# ironic moves a deploy on when the agent heartbeats; the agent heartbeats at 0.3-0.6
# times the timeout ironic gives it at lookup. 10 s instead of the launcher's 30 s takes
# about 10 s of waiting per heartbeat out of each deploy here.
QUICKER = {"api": {"ramdisk_heartbeat_timeout": "10"}}
# What the guest kernel prints when the machine powers off (not on a panic's restart).
POWER_DOWN = "reboot: Power down"


def guest_kernel_args(ironic_cmdline: str, ironic_url: str, advertise_port: int) -> str:
    """The kernel parameters ironic wrote for the node, for the guest.

    ``ipa-api-url`` names ironic at ``ironic_url`` (127.0.0.1), which the guest reaches
    at :data:`GUEST_IRONIC_URL`; ``BOOTIF`` is left to the iPXE script, which adds it as
    pxelinux's ``ipappend 2`` does; the agent advertises the VM's host forward."""
    words, rewritten = [], False
    for word in ironic_cmdline.split():
        key, _, value = word.partition("=")
        if key == "BOOTIF":
            continue
        if key == "ipa-api-url":
            if value.rstrip("/") != ironic_url.rstrip("/"):
                raise HarnessError(f"ironic gave ipa-api-url={value}, not its own {ironic_url}")
            word, rewritten = f"ipa-api-url={GUEST_IRONIC_URL}", True
        words.append(word)
    if not rewritten:
        raise HarnessError(f"no ipa-api-url in ironic's kernel parameters: {ironic_cmdline}")
    words += ["ipa-advertise-host=127.0.0.1", f"ipa-advertise-port={advertise_port}"]
    return " ".join(words)


class ConductorProxy:
    """HTTP proxy for ironic's own requests to the guest's ``guestfwd`` addresses.

    ``routes`` maps a guest address (IP, port) to the 127.0.0.1 port its ``guestfwd``
    leads to; requests for anything else are refused (403), so ironic's requests never
    leave the host. ``requests`` lists (method, absolute URL) of what was forwarded.
    """

    def __init__(self) -> None:
        self.routes: dict[tuple[str, int], int] = {}
        self.requests: list[tuple[str, str]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.forward)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        url = request.url
        if not request.raw_path.startswith("http://"):
            raise web.HTTPBadRequest(text="a proxy request names an absolute http:// URL\n")
        port = self.routes.get((url.host or "", url.port or 80))
        if port is None:
            raise web.HTTPForbidden(
                text=f"{url.host}:{url.port} is not a forwarded guest address\n"
            )
        self.requests.append((request.method, str(url)))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method,
                f"http://127.0.0.1:{port}{request.rel_url}",
                headers=headers,
                data=body or None,
                allow_redirects=False,
            ) as upstream,
        ):
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers[name] = value
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(256 * 1024):
                await response.write(chunk)
            await response.write_eof()
            return response


@dataclass
class GuestFacingIronic(IronicService):
    """The tests' ironic, sending its plain-http requests through :class:`ConductorProxy`
    (``http_proxy``; 127.0.0.1, its own API and the agent's forward, stays direct)."""

    proxy_url: str = ""
    overrides: dict[str, dict[str, str]] = field(default_factory=lambda: dict(QUICKER))

    def env(self) -> dict[str, str]:
        return {**super().env(), "http_proxy": self.proxy_url}


@dataclass
class Deployment:
    """What one ironic deploy into a VM showed."""

    node: dict[str, Any]  # as ironic reported it at ``active``
    seconds: float  # the deploy request to ``active``
    seconds_to_heartbeat: float  # QEMU start to the first heartbeat ironic recorded
    agent_urls: list[str]  # every ``agent_url`` ironic recorded (from the heartbeats)
    kept_certificate: x509.Certificate  # the one ironic verifies the agent with
    banner_fingerprint: str  # the certificate the agent announced on the console
    firmware: BootEntries | None  # UEFI: the NVRAM's entries when the agent started
    exit_code: int  # QEMU's, after the guest powered itself off
    console: str  # the guest's serial console
    ironic_log: str


@dataclass
class VmNode:
    """A ``manual-management`` node for one VM: ``pxe`` boot, ``fake`` power, ``noop``
    management, ``direct`` deploy, a port with the VM's MAC, its root device by serial
    (the VM's 2 GiB disk is below the agent's default minimum)."""

    ironic: IronicService
    uuid: str

    @property
    def api(self) -> IronicApi:
        return IronicApi(self.ironic.url)

    @classmethod
    def enroll(
        cls,
        ironic: IronicService,
        shape: Shape,
        boot_mode: str,
        deploy_files_url: str,
        instance_info: dict[str, Any],
    ) -> VmNode:
        api = IronicApi(ironic.url)
        node = api.post(
            "/v1/nodes",
            {
                "name": f"e2e-{shape.name}",
                "driver": "manual-management",
                "boot_interface": "pxe",
                "deploy_interface": "direct",
                "power_interface": "fake",
                "management_interface": "noop",
                "network_interface": "noop",
                "automated_clean": False,
                "driver_info": {
                    "deploy_kernel": f"{deploy_files_url}/deploy.kernel",
                    "deploy_ramdisk": f"{deploy_files_url}/deploy.initramfs",
                },
                "properties": {
                    "cpu_arch": "x86_64",
                    "capabilities": f"boot_mode:{boot_mode}",
                    "root_device": {"serial": shape.disk_serial},
                },
                "instance_info": instance_info,
            },
        )
        found = cls(ironic, node["uuid"])
        try:
            api.post("/v1/ports", {"node_uuid": found.uuid, "address": shape.mac})
            for target, state in (("manage", "manageable"), ("provide", "available")):
                api.set_provision_state(found.uuid, target)
                api.wait_for_state(found.uuid, state, 60, FAILURE_STATES)
        except BaseException:
            found.delete()
            raise
        return found

    def delete(self) -> None:
        """Any state may be deleted in maintenance (the next run reuses the MAC)."""
        api = self.api
        api.request("PUT", f"/v1/nodes/{self.uuid}/maintenance", {"reason": "test over"})
        api.delete(f"/v1/nodes/{self.uuid}")

    def deploy_ramdisk(self) -> Ramdisk:
        """The deploy kernel and ramdisk ironic fetched and placed in its TFTP root for
        this node: the guest boots these very files."""
        tftp = self.ironic.workdir / "tftp" / self.uuid
        kernel, initramfs = tftp / "deploy_kernel", tftp / "deploy_ramdisk"
        for path in (kernel, initramfs):
            if not path.is_file():
                raise HarnessError(f"ironic did not prepare {path}")
        return Ramdisk(kernel, initramfs, {})

    def kernel_args(self, vm: VM) -> str:
        cmdline = ramdisk_cmdline(self.ironic.workdir / "tftp", vm.shape.mac)
        return guest_kernel_args(cmdline, self.ironic.url, vm.host_port)

    def kept_certificate(self) -> x509.Certificate:
        path = Path(self.ironic.workdir, "certificates", f"{self.uuid}.crt")
        if not path.is_file():
            raise HarnessError(f"ironic kept no agent certificate at {path}")
        return x509.load_pem_x509_certificate(path.read_bytes())


def drive_deploy(
    node: VmNode,
    make_vm: Callable[[Ramdisk], VM],
    timeout: float = 600,
) -> tuple[VM, Deployment]:
    """``deploy`` the node; once ironic waits for its agent, boot the VM that
    ``make_vm`` makes for ironic's deploy ramdisk, with ironic's kernel parameters; wait
    for ``active``. The VM is stopped in any case.

    One more boot, as ``harness.boot_and_wait`` does, when the guest kernel panicked before
    /init (TCG's rare early int3 oops); ironic still waits then. A guest that exits
    without powering off, or a failed deploy, fails at once with both logs.
    """
    api = node.api
    api.set_provision_state(node.uuid, "active")
    started = time.monotonic()
    api.wait_for_state(node.uuid, "wait call-back", 120, FAILURE_STATES)
    vm = make_vm(node.deploy_ramdisk())
    vm.host_port = vm.host_port or free_port()  # the agent advertises it
    vm.kernel_args = f"{vm.kernel_args} {node.kernel_args(vm)}".strip()
    nvram = vm.nvram if isinstance(vm, UefiVM) else None
    agent_urls: list[str] = []
    firmware: BootEntries | None = None
    heartbeat_at = 0.0
    boots = 1
    try:
        vm.start()
        deadline = started + timeout
        while True:
            current = api.node(node.uuid)
            state = current["provision_state"]
            url = (current.get("driver_internal_info") or {}).get("agent_url")
            if url and url not in agent_urls:
                agent_urls.append(url)
                heartbeat_at = heartbeat_at or time.monotonic() - vm.started_at
            if nvram is not None and firmware is None and vm.since_start("agent") is not None:
                # OVMF made its entries on the way to the network boot; the agent has
                # only just started and writes nothing before the image is on the disk.
                firmware = boot_entries(nvram.read_bytes())
            if state == "active" and current["target_provision_state"] is None:
                break
            if state in FAILURE_STATES:
                raise IronicError(f"{state}: {current.get('last_error')}\n{logs(node, vm)}")
            if vm.exited():
                console = vm.console_text()
                if "Kernel panic" in console and "Run /init" not in console and boots == 1:
                    print(
                        f"e2e: {vm.shape.name}: guest kernel panicked before /init,"
                        " booting it again",
                        flush=True,
                    )
                    vm.stop()
                    vm.start()
                    boots += 1
                elif POWER_DOWN not in console:
                    raise HarnessError(
                        f"the guest exited while ironic was {state!r}\n{logs(node, vm)}"
                    )
            if time.monotonic() > deadline:
                raise IronicError(f"still {state!r} after {timeout:g}s\n{logs(node, vm)}")
            time.sleep(0.5)
        seconds = time.monotonic() - started
        exit_code = vm.wait_exit(60)
    finally:
        vm.stop()
    banner = vm.banner()
    if banner is None:
        raise HarnessError(f"no agent banner on the console\n{vm.tail()}")
    return vm, Deployment(
        node=current,
        seconds=seconds,
        seconds_to_heartbeat=heartbeat_at,
        agent_urls=agent_urls,
        kept_certificate=node.kept_certificate(),
        banner_fingerprint=banner["fingerprint"],
        firmware=firmware,
        exit_code=exit_code,
        console=vm.console_text(),
        ironic_log=node.ironic.log_text(),
    )


def logs(node: VmNode, vm: VM) -> str:
    return f"{node.ironic.tail(60)}\n--- guest console (last 40 lines) ---\n{vm.tail()}"


def certificate_ips(certificate: x509.Certificate) -> set[str]:
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return {str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)}


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    return fingerprint(certificate.public_bytes(serialization.Encoding.DER))
