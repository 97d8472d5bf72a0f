"""End-to-end tests: the DIB-built ramdisk PXE-booted in QEMU.

Everything here carries the ``e2e`` marker, which the default run deselects
(pyproject addopts); ``pytest -m e2e tests/e2e`` or ``tox -e e2e`` selects it. Once
selected, a missing ramdisk, QEMU or iPXE fails the run: nothing is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conductor import pki

from .harness import HarnessError, Ramdisk, report, require_tools

NODE = "e2e-node"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def ramdisk() -> Ramdisk:
    try:
        require_tools()
        found = Ramdisk.locate()
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    mib = 1024 * 1024
    report("ramdisk kernel", f"{found.kernel.stat().st_size / mib:.1f} MiB")
    report("ramdisk initramfs (zstd)", f"{found.initramfs.stat().st_size / mib:.1f} MiB")
    if "initramfs_unpacked_bytes" in found.build:
        report("ramdisk unpacked", f"{found.build['initramfs_unpacked_bytes'] / mib:.0f} MiB")
    if "build_seconds" in found.build:
        report("ramdisk build time", f"{found.build['build_seconds']:.0f} s")
    return found


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, the conductor's client certificate, and a second, unrelated CA."""
    base = tmp_path_factory.mktemp("pki")
    pki.init_ca(base / "ca")
    pki.issue_client(base / "ca", "conductor")
    pki.init_ca(base / "other-ca", name="Someone Else")
    pki.issue_client(base / "other-ca", "intruder")
    return base


@pytest.fixture(scope="session")
def bundle(pki_dir: Path) -> pki.NodeBundle:
    return pki.node_bundle(pki_dir / "ca", NODE)
