"""What the built ramdisk must be before any guest boots it."""

from __future__ import annotations

import pytest

from tests.e2e.harness import Ramdisk

pytestmark = pytest.mark.e2e


def test_the_initramfs_ends_on_a_four_byte_boundary(ramdisk: Ramdisk) -> None:
    """A per-node bundle appended after it must start aligned.

    Linux's EFI stub puts several ``initrd=`` files back to back, as iPXE under UEFI
    loads the ramdisk and the node's bundle; the kernel reads a cpio only at a 4-byte
    aligned offset and otherwise drops the bundle ("invalid magic at start of
    compressed archive"), leaving the agent without its certificate.
    """
    assert ramdisk.initramfs.stat().st_size % 4 == 0
