"""The mask loss L_mask = BCE + soft Dice (ConDSeg Eqs. 2–4), shared by several families.

Every loss is computed per image and then averaged over the batch, so that a small lesion in one
image is not diluted by a large one in another (the pooled Dice would be dominated by the larger
mask). Losses take logits: BCE uses the log-sum-exp form, and all arithmetic runs in float32 even
under bf16 autocast, where the sums of a Dice term would otherwise lose most of their digits.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from condseg.losses.base import Loss, register_loss
from condseg.models.base import ModelOutput


def check_shapes(a: Tensor, b: Tensor, names: str = "logits and target") -> None:
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(
            f"{names} must both be (B,1,H,W) of the same shape; got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


def pixel_mean(x: Tensor) -> Tensor:
    """Mean over all but the batch dimension: one value per image."""
    return x.flatten(1).mean(1)


def bce(logits: Tensor, target: Tensor) -> Tensor:
    """Per-image BCE (Eq. 2) from logits, float32."""
    return pixel_mean(
        F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    )


def dice(logits: Tensor, target: Tensor) -> Tensor:
    """Per-image soft Dice loss (Eq. 3) with smoothing 1, so empty masks stay defined."""
    prob = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    inter = (prob * target).sum(1)
    return 1 - (2 * inter + 1) / (prob.sum(1) + target.sum(1) + 1)


def per_image_mask_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Per-image L_mask = BCE + Dice (Eq. 4)."""
    return bce(logits, target) + dice(logits, target)


def mask_loss(logits: Tensor, target: Tensor) -> Tensor:
    """L_mask(Y, M) averaged over the batch; logits and target are (B,1,H,W)."""
    check_shapes(logits, target)
    return per_image_mask_loss(logits, target).mean()


@register_loss("bce-dice", description="BCE + soft Dice on the mask, per image (ConDSeg's L_mask)")
class BceDiceLoss(Loss):
    def forward(self, outputs: Mapping[str, ModelOutput], target: Tensor) -> dict[str, Tensor]:
        return {"loss": mask_loss(outputs["image"].mask, target)}
