"""Tacet's passive mode inside an unchanged ironic conductor (docs/ironic-passive.md).

``deploy``, ``boot`` and ``options`` import ironic and are loaded only by ironic's
conductor through the entry points in pyproject.toml. ``polling``, ``bridge`` and
``addresses`` import no ironic, so the unit suite tests them on their own.
"""
