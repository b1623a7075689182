"""The networks, one folder per family. Each family registers its models, losses and methods
when imported; :func:`load_families` imports the packaged ones the first time a registry is
asked, so importing a single module (the contract, one family) stays cheap and acyclic."""

from __future__ import annotations

from importlib import import_module

FAMILIES = ("condseg", "baselines", "msnet", "chnet", "ensemble", "plugins")


def load_families() -> None:
    for family in FAMILIES:
        import_module(f"condseg.models.{family}")
