"""What a failing deploy looks like in a real ironic: the agent's own words in last_error."""

from __future__ import annotations

import hashlib
import tarfile

from .conftest import Images
from .machine import Machine


def test_wrong_image_checksum_ends_in_deploy_failed(machine: Machine, images: Images) -> None:
    wrong = hashlib.sha256(b"some other image").hexdigest()
    machine.enroll(instance_info=images.instance_info(images.raw, image_os_hash_value=wrong))
    machine.provide()

    node, _ = machine.deploy()

    assert node["provision_state"] == "deploy failed"
    # The agent's message names both digests; only the agent computed the actual one.
    assert f"image checksum mismatch: expected sha256 {wrong}, got {images.raw.sha256}" in (
        node["last_error"] or ""
    ), node["last_error"]
    # ironic collected the agent's logs on failure (log.collect_system_logs).
    kept = sorted((machine.ironic.workdir / "deploy-logs").glob(f"{node['uuid']}*"))
    assert kept, "ironic stored no deploy logs for the failed node"
    with tarfile.open(kept[-1]) as archive:
        assert archive.getnames()
