"""Standard baselines from segmentation_models_pytorch: U-Net, U-Net++ and DeepLabV3+, and their
one-stage recipes. Documented in docs/models.md, "Baselines"."""

from __future__ import annotations

from condseg.methods.baselines import recipe, smp  # noqa: F401  (registrations)
