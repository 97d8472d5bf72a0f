"""Hardware types that accept the passive interfaces.

ironic allows an interface on a node only when the node's hardware type lists that
interface's class (an exact type match), and a plugin cannot extend ironic's own
types. So each type here is one of ironic's with ``tacet-pxe``/``tacet-ipxe`` and
``tacet-passive`` added in front, so they are its defaults; the type's other
interfaces (power, management, the usual boot and deploy ones) stay as they are.
"""

from __future__ import annotations

from typing import Any

from ironic.drivers import generic, ipmi, redfish

from .boot import TacetIPXEBoot, TacetPXEBoot
from .deploy import TacetPassiveDeploy


class _Passive:
    @property
    def supported_boot_interfaces(self) -> list[Any]:
        return [TacetPXEBoot, TacetIPXEBoot, *super().supported_boot_interfaces]  # type: ignore[misc]

    @property
    def supported_deploy_interfaces(self) -> list[Any]:
        return [TacetPassiveDeploy, *super().supported_deploy_interfaces]  # type: ignore[misc]


class TacetManualManagementHardware(_Passive, generic.ManualManagementHardware):
    """``manual-management`` for passive agents."""


class TacetIPMIHardware(_Passive, ipmi.IPMIHardware):
    """``ipmi`` for passive agents."""


class TacetRedfishHardware(_Passive, redfish.RedfishHardware):
    """``redfish`` for passive agents (network boot; virtual media is not passive-ready)."""
