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
``standby.power_off`` (or the test stops it when ironic is done with a boot that ends
otherwise, e.g. inspection).

A passive node (Tacet's ironic plugin, :class:`VmNode` with ``agent_port``) needs only the
second bridge: ironic's ``tacet-pxe`` boot writes no ``ipa-api-url``, the guest gets no
``guestfwd`` to ironic, and the plugin polls the agent at the VM's host forward, named in
``driver_info/tacet_address``; no ``ipa-advertise-*`` is added.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.ironic.launcher import (
    FAILURE_STATES,
    IronicApi,
    IronicError,
    IronicService,
    locate_ironic,
    node_body,
)
from tests.ironic.node import ramdisk_cmdline

from .disk_images import BootImage
from .harness import (
    IMAGE_HOST,
    IRONIC_HOST,
    IRONIC_PORT,
    VM,
    BackgroundApp,
    DiskBoot,
    HarnessError,
    ImageServer,
    Ramdisk,
    Shape,
    UefiVM,
    boot_from_disk,
    fingerprint,
    free_port,
    report,
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
# What would make an agent call ironic.
PASSIVE_FORBIDDEN = frozenset({"ipa-api-url", "ipa-inspection-callback-url"})


def without_bootif(ironic_cmdline: str) -> list[str]:
    """``BOOTIF`` is left to the iPXE script, which adds it as pxelinux's ``ipappend 2``
    does."""
    return [word for word in ironic_cmdline.split() if word.partition("=")[0] != "BOOTIF"]


def guest_kernel_args(ironic_cmdline: str, ironic_url: str, advertise_port: int) -> str:
    """The kernel parameters ironic wrote for the node, for the guest.

    ``ipa-api-url`` names ironic at ``ironic_url`` (127.0.0.1), which the guest reaches
    at :data:`GUEST_IRONIC_URL`; the agent advertises the VM's host forward."""
    words, rewritten = [], False
    for word in without_bootif(ironic_cmdline):
        key, _, value = word.partition("=")
        if key == "ipa-api-url":
            if value.rstrip("/") != ironic_url.rstrip("/"):
                raise HarnessError(f"ironic gave ipa-api-url={value}, not its own {ironic_url}")
            word, rewritten = f"ipa-api-url={GUEST_IRONIC_URL}", True
        words.append(word)
    if not rewritten:
        raise HarnessError(f"no ipa-api-url in ironic's kernel parameters: {ironic_cmdline}")
    words += ["ipa-advertise-host=127.0.0.1", f"ipa-advertise-port={advertise_port}"]
    return " ".join(words)


def passive_guest_kernel_args(ironic_cmdline: str) -> str:
    """The kernel parameters ironic's ``tacet-pxe`` boot wrote for a passive node, as they
    are: no URL of ironic's may be among them (the guest has no route to ironic anyway),
    and nothing is added, since ironic finds the agent by ``driver_info/tacet_address``."""
    words = without_bootif(ironic_cmdline)
    call_backs = [w for w in words if w.partition("=")[0] in PASSIVE_FORBIDDEN]
    if call_backs:
        raise HarnessError(f"the passive boot names ironic: {' '.join(call_backs)}")
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
class Boot:
    """What one boot of the VM, for one of ironic's flows, showed."""

    node: dict[str, Any]  # as ironic reported it at the end of the flow
    seconds: float  # the provision-state request to its end
    # QEMU start to the first agent_url ironic recorded (a heartbeat's, or a poll's that
    # the plugin handed to ironic as one); 0 when there was none (inspection)
    seconds_to_heartbeat: float
    agent_urls: list[str]  # every ``agent_url`` ironic recorded (heartbeats or polls)
    banner_fingerprint: str  # the certificate the agent announced on the console
    banner_mode: str  # the agent's mode, from the same line
    firmware: BootEntries | None  # UEFI: the NVRAM's entries when the agent started
    exit_code: int | None  # QEMU's, when the guest powered itself off
    console: str  # the guest's serial console
    ironic_log: str


@dataclass
class Deployment(Boot):
    """A boot that deployed: ironic kept the agent's certificate (``agent_verify_ca``)."""

    kept_certificate: x509.Certificate  # the one ironic verifies the agent with


@dataclass
class VmNode:
    """A ``manual-management`` node for one VM: ``pxe`` boot, ``fake`` power, ``noop``
    management, ``direct`` deploy, a port with the VM's MAC, its root device by serial
    (the VM's 2 GiB disk is below the agent's default minimum).

    A passive node (``agent_port`` set) is on Tacet's plugin instead:
    ``tacet-manual-management`` with ``tacet-pxe`` boot and ``tacet-passive`` deploy, its
    agent at the VM's host forward ``127.0.0.1:agent_port`` (``driver_info/tacet_address``)
    and the VM's SMBIOS serial as the identity the agent must show."""

    ironic: IronicService
    uuid: str
    agent_port: int = 0

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
        passive: bool = False,
        automated_clean: bool = False,
    ) -> VmNode:
        """The node, ``available`` (``manageable`` with automated cleaning, which needs
        its agent)."""
        api = IronicApi(ironic.url)
        agent_port = free_port() if passive else 0
        body = node_body(
            f"{deploy_files_url}/deploy.kernel",
            f"{deploy_files_url}/deploy.initramfs",
            name=f"e2e-{shape.name}",
            boot_mode=boot_mode,
            root_device={"serial": shape.disk_serial},
            instance_info=instance_info,
            automated_clean=automated_clean,
            passive_address=f"127.0.0.1:{agent_port}" if passive else None,
        )
        if passive:
            body["driver_info"]["tacet_system_serial"] = shape.system_serial
        found = cls(ironic, api.post("/v1/nodes", body)["uuid"], agent_port)
        try:
            api.post("/v1/ports", {"node_uuid": found.uuid, "address": shape.mac})
            steps = [("manage", "manageable")]
            if not automated_clean:
                steps.append(("provide", "available"))
            for target, state in steps:
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
        if self.agent_port:
            return passive_guest_kernel_args(cmdline)
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
    """``deploy`` the node (:func:`drive_boot`); the agent's ``standby.power_off`` ends
    the guest."""
    vm, boot = drive_boot(node, make_vm, "active", "wait call-back", "active", True, timeout)
    fields = {name: getattr(boot, name) for name in Boot.__dataclass_fields__}
    return vm, Deployment(**fields, kept_certificate=node.kept_certificate())


def drive_boot(
    node: VmNode,
    make_vm: Callable[[Ramdisk], VM],
    target: str,
    waiting: str,
    done: str,
    guest_powers_off: bool,
    timeout: float = 600,
) -> tuple[VM, Boot]:
    """Ask ironic for ``target``; once it is ``waiting`` for the agent, boot the VM that
    ``make_vm`` makes for ironic's deploy ramdisk, with ironic's kernel parameters (a
    passive node's VM at its ``agent_port``); wait for ``done``. With
    ``guest_powers_off`` the guest must power itself off (the agent's
    ``standby.power_off``), else the test plays ironic's power off. The VM is stopped in
    any case.

    One more boot, as ``harness.boot_and_wait`` does, when the guest kernel panicked before
    /init (TCG's rare early int3 oops); ironic still waits then. A guest that exits
    without powering off, or a failed flow, fails at once with both logs.
    """
    api = node.api
    api.set_provision_state(node.uuid, target)
    started = time.monotonic()
    api.wait_for_state(node.uuid, waiting, 120, FAILURE_STATES)
    vm = make_vm(node.deploy_ramdisk())
    vm.host_port = node.agent_port or vm.host_port or free_port()  # the agent's address
    vm.kernel_args = f"{vm.kernel_args} {node.kernel_args(vm)}".strip()
    nvram = vm.nvram if isinstance(vm, UefiVM) else None
    agent_urls: list[str] = []
    firmware: BootEntries | None = None
    heartbeat_at = 0.0
    boots = 1
    exit_code: int | None = None
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
            if state == done and current["target_provision_state"] is None:
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
                elif POWER_DOWN not in console or not guest_powers_off:
                    raise HarnessError(
                        f"the guest exited while ironic was {state!r}\n{logs(node, vm)}"
                    )
            if time.monotonic() > deadline:
                raise IronicError(f"still {state!r} after {timeout:g}s\n{logs(node, vm)}")
            time.sleep(0.5)
        seconds = time.monotonic() - started
        if guest_powers_off:
            exit_code = vm.wait_exit(60)
    finally:
        vm.stop()
    banner = vm.banner()
    if banner is None:
        raise HarnessError(f"no agent banner on the console\n{vm.tail()}")
    return vm, Boot(
        node=current,
        seconds=seconds,
        seconds_to_heartbeat=heartbeat_at,
        agent_urls=agent_urls,
        banner_fingerprint=banner["fingerprint"],
        banner_mode=banner["mode"],
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


# --- one ironic per test module, and what every deploy into a VM must show ------------


@dataclass(frozen=True)
class IronicSite:
    ironic: GuestFacingIronic
    proxy: ConductorProxy
    deploy_files_url: str  # the deploy kernel and ramdisk, for ironic on 127.0.0.1


@contextlib.contextmanager
def ironic_site(
    ramdisk: Ramdisk, workdir: Path, overrides: dict[str, dict[str, str]] | None = None
) -> Iterator[IronicSite]:
    """A real ironic (with ``overrides`` of its configuration, :data:`QUICKER` unless
    given), its proxy to the guests' addresses, and the built ramdisk served to it as the
    nodes' deploy kernel and ramdisk."""
    try:
        install = locate_ironic()
    except IronicError as exc:
        pytest.fail(str(exc), pytrace=False)
    proxy = ConductorProxy()
    files = ImageServer({"deploy.kernel": ramdisk.kernel, "deploy.initramfs": ramdisk.initramfs})
    with BackgroundApp(proxy.app) as proxy_app, BackgroundApp(files.app) as files_app:
        service = GuestFacingIronic(
            install,
            workdir,
            proxy_url=f"http://127.0.0.1:{proxy_app.port}",
            overrides=QUICKER if overrides is None else overrides,
        )
        try:
            service.start()
        except IronicError as exc:
            service.stop()
            pytest.fail(str(exc), pytrace=False)
        report("ironic start to API answering", f"{service.ready_seconds:.1f} s")
        try:
            yield IronicSite(service, proxy, f"http://127.0.0.1:{files_app.port}")
        finally:
            service.stop()
            print(f"ironic log: {service.log}", flush=True)


@contextlib.contextmanager
def served_image(site: IronicSite, image: BootImage) -> Iterator[tuple[ImageServer, int]]:
    """``image`` on a host server (and its port) for the guest's ``guestfwd`` to
    :data:`IMAGE_HOST`, which ironic's proxy reaches too while it is served."""
    images = ImageServer({image.path.name: image.path})
    with BackgroundApp(images.app) as server:
        site.proxy.routes[(IMAGE_HOST, 80)] = server.port
        try:
            yield images, server.port
        finally:
            del site.proxy.routes[(IMAGE_HOST, 80)]


def whole_disk_instance_info(image: BootImage) -> dict[str, Any]:
    """The instance: ``image`` by its URL as the guest sees it."""
    return {
        "image_source": f"http://{IMAGE_HOST}/{image.path.name}",
        "image_os_hash_algo": "sha256",
        "image_os_hash_value": image.sha256,
        "image_disk_format": "raw",
    }


def check_deployment(
    site: IronicSite, images: ImageServer, image: BootImage, vm: VM, deployment: Deployment
) -> None:
    """What every deploy must show: ``active``, the image fetched by the guest (and only
    checked by ironic), the agent powered the guest off, TLS through the host forward
    verified by the certificate the agent announced."""
    report(f"{vm.shape.name}: ironic deploy -> active", f"{deployment.seconds:.1f} s")
    report(
        f"{vm.shape.name}: QEMU start -> first heartbeat in ironic",
        f"{deployment.seconds_to_heartbeat:.1f} s",
    )
    assert deployment.node["last_error"] is None, deployment.node["last_error"]
    # The guest downloaded the image; ironic only checked the URL (through the proxy).
    name = f"/{image.path.name}"
    assert ("GET", name) in images.requests, images.requests
    assert ("HEAD", f"http://{IMAGE_HOST}{name}") in site.proxy.requests, site.proxy.requests
    # ironic's standby.power_off: the guest powered itself off (QEMU exits cleanly).
    node_uuid = deployment.node["uuid"]
    assert f"Agent command standby.power_off for node {node_uuid} returned" in deployment.ironic_log
    assert POWER_DOWN in deployment.console and deployment.exit_code == 0
    # TLS through the forward: ironic called the agent at the VM's forward, verified
    # against the certificate the agent announced on its console.
    assert deployment.agent_urls == [f"https://127.0.0.1:{vm.host_port}"], deployment.agent_urls
    assert certificate_fingerprint(deployment.kept_certificate) == deployment.banner_fingerprint
    assert "127.0.0.1" in certificate_ips(deployment.kept_certificate)


def disk_boot(vm: VM, image: BootImage) -> DiskBoot:
    """The VM from its disk (``boot_from_disk``); the marker must be on the console and
    QEMU must exit cleanly (the image powers off)."""
    result = boot_from_disk(vm, image.marker)
    tail = "\n".join(result.console.splitlines()[-30:])
    assert result.seconds_to_marker is not None, f"no marker from the disk; console:\n{tail}"
    report(
        f"{vm.shape.name}: disk boot (QEMU start) -> marker", f"{result.seconds_to_marker:.1f} s"
    )
    assert result.exit_code == 0, tail
    assert "iPXE" not in result.console and "PXE" not in result.console  # no network boot
    return result
