"""The ``[tacet]`` group of ironic.conf: how the conductor polls passive agents."""

from __future__ import annotations

from typing import Any

from oslo_config import cfg

from conductor.http import DEFAULT_KEPT_ALIVE

TRUST_MODES = ("token-binding", "claim", "mtls")

opts = [
    cfg.IntOpt(
        "poll_interval",
        default=10,
        min=0,
        help="Seconds between two polls of every passive agent mapped to this conductor "
        "(nodes in deploy, clean, service, rescue or inspect wait). 0 turns polling off.",
    ),
    cfg.IntOpt(
        "poll_concurrency",
        default=64,
        min=1,
        help="Agents polled at the same time by one conductor.",
    ),
    cfg.FloatOpt(
        "poll_jitter",
        default=1.0,
        min=0,
        help="Each poll of a sweep starts after a random delay of up to this many "
        "seconds, so a conductor's polls do not arrive together.",
    ),
    cfg.IntOpt(
        "poll_timeout",
        default=10,
        min=1,
        help="Seconds one request to an agent may take (connect, TLS, answer).",
    ),
    cfg.IntOpt(
        "agent_timeout",
        min=1,
        help="Seconds without an answer after which a node whose agent answered before "
        "fails, as a missing heartbeat would. Defaults to [api]ramdisk_heartbeat_timeout. "
        "Until the first answer ironic's own callback timeouts apply.",
    ),
    cfg.IntOpt(
        "heartbeat_refresh",
        min=1,
        help="Seconds after which ironic's callback-timeout clock (provision_updated_at) "
        "is moved for an agent that answers with the same command list as before "
        "(ironic hears every change at once, as a heartbeat). Defaults to half the "
        "shortest of [api]ramdisk_heartbeat_timeout and the callback timeout of the "
        "node's wait state.",
    ),
    cfg.IntOpt(
        "kept_alive_agents",
        default=DEFAULT_KEPT_ALIVE,
        min=0,
        help="Agents whose TLS connection this conductor keeps open between polls. A "
        "kept connection costs the conductor about 70 KiB of memory and saves a TLS "
        "handshake per poll; the others reconnect for each poll with TLS session "
        "resumption (an abbreviated handshake, about 1 ms of CPU).",
    ),
    cfg.PortOpt("agent_port", default=9999, help="The agents' TLS port."),
    cfg.StrOpt(
        "trust_mode",
        default="token-binding",
        choices=[
            (
                "token-binding",
                "ironic pregenerates the agent token and the boot "
                "configuration carries it (ipa-agent-token); the conductor verifies the "
                "agent's token binding before it sends anything.",
            ),
            (
                "claim",
                "claim on first use: the first conductor to reach the agent gives it "
                "the token. Weakest; only on a provisioning network you control.",
            ),
            (
                "mtls",
                "mutual TLS: the agents demand a client certificate from the CA baked into "
                "the ramdisk; the conductor presents client_cert_file in its polls and in "
                "ironic's agent commands. The agent's certificate is recorded at first "
                "contact and the token is handed over inside TLS, as in claim.",
            ),
        ],
        help="How the agent and the conductor come to trust each other.",
    ),
    cfg.StrOpt(
        "client_cert_file",
        help="trust_mode mtls: the conductor's client certificate (PEM), issued by the CA "
        "the agents name as their client CA (tacet pki client).",
    ),
    cfg.StrOpt(
        "client_key_file",
        help="trust_mode mtls: the private key of client_cert_file (PEM, unencrypted).",
    ),
    cfg.BoolOpt(
        "release_free_memory",
        default=True,
        help="After each sweep, ask the C library (glibc's malloc_trim) to give the "
        "memory freed during the sweep back to the operating system, so the conductor's "
        "RSS follows what it uses rather than the most it used.",
    ),
    cfg.IntOpt(
        "malloc_arena_max",
        default=2,
        min=0,
        help="At most this many glibc heaps (arenas) for the conductor's threads, set when "
        "the plugin loads (mallopt M_ARENA_MAX), where glibc makes up to 8 per core and "
        "each strands freed memory; 0 leaves glibc's default. A MALLOC_ARENA_MAX in the "
        "conductor's environment takes precedence.",
    ),
    cfg.StrOpt(
        "dnsmasq_leases_file",
        help="Lease file of the dnsmasq that serves the provisioning network when ironic "
        "runs without Neutron (Bifrost, Metal3): an agent's address is the lease of one of "
        "the node's port MACs.",
    ),
]


def register(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(opts, group="tacet")


def list_opts() -> list[tuple[str, list[Any]]]:
    """For oslo-config-generator (entry point oslo.config.opts ``tacet.ironic``)."""
    return [("tacet", opts)]
