"""ironic's agent TLS settings stay at ironic's own defaults in these tests.

The deploy tests then prove Tacet works with them: callback URLs must be https
(``require_tls``), the agent's certificate is verified (``verify_ca``, with the
certificate from the heartbeat), and TLS 1.3 at least (``tls_minimum_version``).
"""

from __future__ import annotations

import configparser
import subprocess

from .launcher import IronicService

TLS_OPTIONS = ("require_tls", "verify_ca", "tls_minimum_version")
# What ironic 39 documents as the defaults.
DOCUMENTED = {"require_tls": "True", "verify_ca": "True", "tls_minimum_version": "1.3"}


def ironic_defaults(ironic: IronicService) -> dict[str, str]:
    """The defaults as ironic's own code declares them (no configuration file read)."""
    script = (
        "from ironic.conf import CONF\n"
        "CONF([], project='ironic', default_config_files=[], default_config_dirs=[])\n"
        f"for name in {TLS_OPTIONS!r}:\n"
        "    print(name, getattr(CONF.agent, name))\n"
    )
    done = subprocess.run(
        [str(ironic.install.bin / "python"), "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env=ironic.env(),
    )
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


def test_agent_tls_settings_are_ironic_defaults(ironic: IronicService) -> None:
    written = configparser.ConfigParser(interpolation=None)
    written.read(ironic.conf)
    assert not set(TLS_OPTIONS) & set(written["agent"]), "ironic.conf must not set them"

    loaded = ironic.loaded_options()  # what the running ironic logged at start
    defaults = ironic_defaults(ironic)
    for name in TLS_OPTIONS:
        assert loaded[f"agent.{name}"] == defaults[name] == DOCUMENTED[name], name
