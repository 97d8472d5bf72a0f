"""Whole-disk deploys by a real ironic to ``active`` in BIOS mode, raw and qcow2.

ironic's ``direct`` deploy: lookup by MAC, auto TLS (the agent's certificate in the
heartbeat's ``agent_verify_ca``), the agent token, deploy steps, ``write_image`` through
``standby.prepare_image``, ``get_partition_uuids``, ``standby.sync`` and
``standby.power_off`` (only recorded), then ironic's fake power. The bytes on the loop
device are checked afterwards.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .conftest import IMAGE_MIB, Image, Images, report
from .machine import Machine


def deploy_and_check(machine: Machine, images: Images, image: Image) -> float:
    machine.enroll(boot_mode="bios", instance_info=images.instance_info(image))
    machine.provide()
    requests_before = len(images.server.requests)
    node, seconds = machine.deploy()
    assert node["provision_state"] == "active", node.get("last_error")
    assert node["last_error"] is None
    written = machine.disk.read(0, len(images.raw_bytes))
    assert hashlib.sha256(written).hexdigest() == images.raw.sha256
    assert ("GET", f"/{image.name}") in images.server.requests[requests_before:]

    (agent,) = machine.agents
    log = agent.log_text()
    assert f"lookup: this is node {node['uuid']}" in log
    assert f"writing image {image.name} to {machine.disk.device}" in log
    # ironic asked the agent to power off; the local agent only recorded it.
    assert "power off requested (recording backend, nothing done)" in log
    # Auto TLS: ironic kept the certificate the agent sent in its heartbeat and verified
    # the agent's TLS answers against it.
    kept = Path(machine.ironic.workdir, "certificates", f"{node['uuid']}.crt")
    assert (
        kept.read_text().strip() == (agent.workdir / "state" / "agent-cert.pem").read_text().strip()
    )
    return seconds


def test_deploy_raw_whole_disk_image_bios(machine: Machine, images: Images) -> None:
    seconds = deploy_and_check(machine, images, images.raw)
    report(f"BIOS deploy of a {IMAGE_MIB} MiB raw image, deploy to active", f"{seconds:.1f} s")


def test_deploy_qcow2_whole_disk_image_bios(machine: Machine, images: Images) -> None:
    seconds = deploy_and_check(machine, images, images.qcow2)
    report(f"BIOS deploy of a {IMAGE_MIB} MiB qcow2 image, deploy to active", f"{seconds:.1f} s")
