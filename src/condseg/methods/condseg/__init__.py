"""ConDSeg (Lei et al., AAAI 2025): the networks (the full model, its PVT variant, Net_0), their
losses (``condseg-cr``, ``condseg-sid``), the two-stage recipe and the import of the authors'
checkpoints. Documented in docs/models.md, "ConDSeg family"."""

from __future__ import annotations

from condseg.methods.condseg import (  # noqa: F401  (registrations)
    convert,
    losses,
    model,
    net0,
    recipe,
)
