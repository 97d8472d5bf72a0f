"""A real agent for the documentation's examples (tests/test_docs_examples.py).

``python -m tests.docs_agent BUNDLE.cpio WORKDIR`` unpacks a node bundle with cpio as the
node's initramfs would, and starts the agent on 127.0.0.1:9999 with the bundle's files as
its configuration (the same discovery as on a node). Its only disk is a sparse 5 GiB file
in WORKDIR, so an example that writes an image writes that file and nothing else, and
power actions are only recorded. The docs test runs it inside a network namespace of its
own, where 127.0.0.1:9999 is free.
"""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
from pathlib import Path

from agent.config import load_config
from agent.daemon import serve
from agent.power import RecordingPower
from tests.image.test_prepare_image import GIB, DiskInventory


def main(argv: list[str]) -> int:
    bundle, work = Path(argv[0]).resolve(), Path(argv[1])
    root = work / "root"
    root.mkdir(parents=True)
    subprocess.run(
        ["cpio", "-idm", "--no-absolute-filenames", "--quiet"],
        input=gzip.decompress(bundle.read_bytes()),  # as the kernel does
        cwd=root,
        check=True,
    )
    cmdline = work / "cmdline"
    cmdline.write_text("ipa-listen-host=127.0.0.1 ipa-listen-port=9999\n")
    disk = work / "disk"
    with open(disk, "wb") as handle:
        handle.truncate(5 * GIB)
    config = load_config(cmdline, root / "etc" / "tacet", work / "state")
    asyncio.run(serve(config, RecordingPower(), collect_inventory=DiskInventory(disk)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
