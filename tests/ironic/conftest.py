"""Tacet driven by a real ironic (from PyPI) in active mode, on this machine.

Everything here carries the ``ironic`` marker, which the default run deselects
(pyproject addopts); ``tools/test-ironic`` or ``tox -e ironic`` selects it. Once
selected, a missing ironic installation, ``losetup`` or root fails the run: nothing is
skipped. See README.md beside this file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import BackgroundApp, ImageServer, build_image

from .launcher import IronicError, IronicService, locate_ironic
from .machine import Machine

HERE = Path(__file__).parent
IMAGE_MIB = 32


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.ironic)


@contextlib.contextmanager
def running_ironic(
    workdir: Path, overrides: dict[str, dict[str, str]] | None = None
) -> Iterator[IronicService]:
    """An all-in-one ironic in ``workdir`` for a fixture; a missing or failing ironic
    fails the test (with its log's tail), it never skips."""
    try:
        install = locate_ironic()
    except IronicError as exc:
        pytest.fail(str(exc), pytrace=False)
    service = IronicService(install, workdir, overrides=overrides or {})
    try:
        service.start()
    except IronicError as exc:
        service.stop()
        pytest.fail(f"{exc}\n{service.tail()}", pytrace=False)
    try:
        yield service
    finally:
        service.stop()


def report(label: str, value: str) -> None:
    """Figures for the log of the run (``-s``, or the captured output on failure)."""
    print(f"ironic figure: {label}: {value}", flush=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test shows the tails of ironic's log and of each agent boot's log."""
    outcome = yield
    result = outcome.get_result()
    if not result.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    machine = funcargs.get("machine")
    if isinstance(machine, Machine):
        result.sections.append(("ironic and agent logs", machine.logs()))
    elif isinstance(funcargs.get("ironic"), IronicService):
        result.sections.append(("ironic log", funcargs["ironic"].tail()))


@pytest.fixture(scope="session")
def ironic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IronicService]:
    """One ironic for the whole run; each test enrolls (and deletes) its own node."""
    with running_ironic(tmp_path_factory.mktemp("ironic")) as service:
        install = service.install
        report("ironic", f"{install.version} from {install.venv}, API at {service.url}")
        report("ironic start to API answering", f"{service.ready_seconds:.1f} s")
        yield service
    print(f"ironic log: {service.log}", flush=True)


@dataclass(frozen=True)
class Image:
    name: str
    path: Path
    disk_format: str
    sha256: str


@dataclass(frozen=True)
class Images:
    """The test images and the loopback server that serves them (and the deploy
    kernel/ramdisk, which ironic's pxe boot fetches and caches but nobody boots)."""

    raw: Image
    qcow2: Image
    raw_bytes: bytes
    server: ImageServer
    base_url: str

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def instance_info(self, image: Image, **changes: Any) -> dict[str, Any]:
        info = {
            "image_source": self.url(image.name),
            "image_os_hash_algo": "sha256",
            "image_os_hash_value": image.sha256,
            "image_disk_format": image.disk_format,
        }
        return {**info, **changes}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    workdir = tmp_path_factory.mktemp("images")
    built = build_image(workdir, IMAGE_MIB)  # MBR, ext4 partition with a marker file
    qcow2 = workdir / "image.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(built.path), str(qcow2)],
        check=True,
    )
    kernel, ramdisk = workdir / "deploy.kernel", workdir / "deploy.initramfs"
    kernel.write_bytes(b"a deploy kernel nobody boots: the agent runs as a local process\n")
    ramdisk.write_bytes(b"a deploy ramdisk nobody boots\n")
    server = ImageServer(
        {
            "image.raw": built.path,
            "image.qcow2": qcow2,
            "deploy.kernel": kernel,
            "deploy.initramfs": ramdisk,
        }
    )
    with BackgroundApp(server.app) as app:
        yield Images(
            raw=Image("image.raw", built.path, "raw", built.sha256),
            qcow2=Image("image.qcow2", qcow2, "qcow2", sha256_file(qcow2)),
            raw_bytes=built.path.read_bytes(),
            server=server,
            base_url=f"http://127.0.0.1:{app.port}",
        )


def agent_inventory() -> dict[str, Any]:
    """This machine's inventory as the agent reports it (``python -m hardware``)."""
    done = subprocess.run(
        [sys.executable, "-m", "hardware"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise IronicError(f"python -m hardware failed: {done.stderr[-2000:]}")
    inventory: dict[str, Any] = json.loads(done.stdout)
    return inventory


@pytest.fixture(scope="session")
def host_macs() -> list[str]:
    """The MACs the agent reports: ironic's lookup finds the node by them."""
    interfaces = agent_inventory().get("interfaces") or []
    return [i["mac_address"] for i in interfaces if i.get("mac_address")]


@pytest.fixture
def machine(
    ironic: IronicService, images: Images, host_macs: list[str], tmp_path: Path
) -> Iterator[Machine]:
    try:
        found = Machine(
            ironic,
            tmp_path,
            host_macs,
            images.url("deploy.kernel"),
            images.url("deploy.initramfs"),
        )
    except IronicError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield found
    found.close()
