"""What both sides of the wire share: the agent (``agent/``) and its conductors (``conductor/``).

The protocol's constants and error shapes, certificate fingerprints and the SPKI walk,
the token binding, the verifying client TLS policy, atomic private-file writing, and the
parser of OpenStack's network_data.json (the conductor checks what the ramdisk reads).
This package imports neither side, so the conductor can be installed and imported
without the agent, and ``image/`` can fetch over verified TLS without knowing either.
"""

# Tacet's version, as in pyproject.toml: in the agent's status and the conductor's User-Agent.
__version__ = "0.1.0"
