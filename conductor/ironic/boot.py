"""Boot interfaces that boot Tacet in passive mode: ironic's PXE and iPXE, minus the call-back URLs.

ironic hands every boot interface the ramdisk's parameters; in passive mode the agent
must not learn where ironic is, so ``ipa-api-url`` and ``ipa-inspection-callback-url``
are dropped. In ``token-binding`` trust the token ironic pregenerates (as it does for
virtual media) goes in instead, as ``ipa-agent-token``.
"""

from __future__ import annotations

from typing import Any

from ironic.conductor import utils as manager_utils
from ironic.drivers.modules import ipxe, pxe
from oslo_config import cfg

from . import options

CONF = cfg.CONF
options.register(CONF)

CALL_BACK_PARAMETERS = ("ipa-api-url", "ipa-inspection-callback-url")


def passive_parameters(task: Any, ramdisk_params: dict[str, Any]) -> dict[str, Any]:
    params = {k: v for k, v in ramdisk_params.items() if k not in CALL_BACK_PARAMETERS}
    params.pop("ipa-agent-token", None)
    if CONF.tacet.trust_mode == "token-binding":
        # A fresh token for every boot, kept across the power-offs of this boot's flow.
        manager_utils.add_secret_token(task.node, pregenerated=True)
        task.node.save()
        params["ipa-agent-token"] = task.node.driver_internal_info["agent_secret_token"]
    return params


class TacetPXEBoot(pxe.PXEBoot):
    """``pxe`` that boots the ramdisk without call-back URLs."""

    def prepare_ramdisk(self, task: Any, ramdisk_params: dict[str, Any]) -> None:
        super().prepare_ramdisk(task, passive_parameters(task, ramdisk_params))


class TacetIPXEBoot(ipxe.iPXEBoot):
    """``ipxe`` that boots the ramdisk without call-back URLs."""

    def prepare_ramdisk(self, task: Any, ramdisk_params: dict[str, Any]) -> None:
        super().prepare_ramdisk(task, passive_parameters(task, ramdisk_params))
