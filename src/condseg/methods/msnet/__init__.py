"""MSNet and M2SNet (Zhao et al.): the subtraction network, its multi-scale units, the recipe and
the import of the authors' checkpoints; the structure loss is shared (``losses/structure.py``).
Documented in docs/models.md, "MSNet and M2SNet"."""

from __future__ import annotations

from condseg.methods.msnet import convert, model, recipe  # noqa: F401  (registrations)
