"""The packaged methods, one folder per family: its network(s), losses, training recipe and the
import rules of its authors' checkpoints, each registered when the folder is imported.

Nothing in the engine imports a family: the first lookup in any registry imports this package
once (:func:`condseg.registry.load_packaged`). A new method is one more folder here — or a
module of one's own that makes the same ``register_*`` calls (docs/usage.md, "Custom methods").
"""

from __future__ import annotations

from importlib import import_module

import condseg.losses
import condseg.models.ensemble  # noqa: F401  (the ensemble model)

#: Import order is registration order (the refusal of an unknown checkpoint lists them so).
FAMILIES = ("condseg", "baselines", "msnet", "chnet", "pdcr_uafr")

for _family in FAMILIES:
    import_module(f"condseg.methods.{_family}")
