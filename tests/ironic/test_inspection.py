"""In-band inspection by a real ironic: the agent posts its inventory to continue_inspection.

ironic's ``agent`` inspect interface boots the ramdisk with
``ipa-inspection-callback-url`` (``<api>/v1/continue_inspection``, from the PXE config
ironic wrote); the agent posts its inventory there, and ironic stores it and returns the
node to ``manageable``.
"""

from __future__ import annotations

from .conftest import report
from .machine import Machine
from .node import inventory_in_one_disk_view


def test_inspection_stores_the_agents_inventory(machine: Machine) -> None:
    machine.enroll()

    node, seconds = machine.inspect()

    assert node["provision_state"] == "manageable", node.get("last_error")
    assert node["last_error"] is None
    report("inspection, inspect to manageable", f"{seconds:.1f} s")
    stored = machine.api.get(f"/v1/nodes/{machine.ident}/inventory")["inventory"]
    (agent,) = machine.agents
    assert "ipa-inspection-callback-url=" in agent.cmdline()
    expected = inventory_in_one_disk_view(machine.disk, agent.cmdline())
    assert [d["name"] for d in expected["disks"]] == [machine.disk.device]
    assert {i["mac_address"] for i in expected["interfaces"]} >= set(machine.macs)
    assert stored == expected
