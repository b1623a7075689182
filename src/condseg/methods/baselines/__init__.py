"""Standard baselines from segmentation_models_pytorch: U-Net, U-Net++ and DeepLabV3+."""

from __future__ import annotations

from condseg.models.baselines import recipe, smp  # noqa: F401  (registrations)
