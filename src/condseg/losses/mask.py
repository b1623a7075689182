"""The mask loss L_mask = BCE + soft Dice (ConDSeg Eqs. 2–4), shared by several families.

Every loss is computed per image and then averaged over the batch, so that a small lesion in one
image is not diluted by a large one in another (the pooled Dice would be dominated by the larger
mask). Losses take logits: BCE uses the log-sum-exp form, and all arithmetic runs in float32 even
under bf16 autocast, where the sums of a Dice term would otherwise lose most of their digits.

With K >= 2 classes (K logit maps, background included; the target holds class ids, int64
(B, 1, H, W), :data:`~condseg.data.labels.IGNORE_ID` for ignored pixels) L_mask is
cross-entropy + soft Dice over the foreground classes, smp's ``DiceLoss(mode="multiclass")``
(docs/decisions.md): both over the batch's non-ignored pixels, not per image.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from condseg.data.labels import IGNORE_ID
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


def check_classes(logits: Tensor, target: Tensor) -> None:
    """K-class logits (B,K,H,W) and their class-id target (B,1,H,W), integer."""
    if (logits.ndim != 4 or target.shape != (logits.shape[0], 1, *logits.shape[2:])
            or target.is_floating_point()):
        raise ValueError(f"K-class logits (B,K,H,W) need an integer class-id target (B,1,H,W); "
                         f"got {tuple(logits.shape)} and {target.dtype} {tuple(target.shape)}")


def one_hot(target: Tensor, classes: int) -> tuple[Tensor, Tensor]:
    """The class ids ``target`` (B,1,H,W) as float32 one-hot maps (B,K,H,W), ignored pixels 0
    in every map, and the mask of the pixels kept (B,1,H,W), float32."""
    ids = target.long()
    kept = ids != IGNORE_ID
    hot = F.one_hot(torch.where(kept, ids, 0)[:, 0], classes).permute(0, 3, 1, 2)
    return hot.float() * kept, kept.float()


def multiclass_parts(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(cross-entropy, soft Dice loss over the foreground classes) of K-class ``logits`` and
    the class ids ``target``, in float32, ignored pixels left out of both. The Dice term is
    smp's: 1 - Dice per foreground class pooled over the batch, 0 for a class the batch does
    not hold, averaged over the K - 1 classes."""
    from segmentation_models_pytorch.losses import DiceLoss  # here: importing condseg stays fast

    check_classes(logits, target)
    logits, ids = logits.float(), target[:, 0].long()
    kept = (ids != IGNORE_ID).sum()
    # summed and divided by the kept pixels: a batch with none is 0, not NaN
    ce = F.cross_entropy(logits, ids, ignore_index=IGNORE_ID, reduction="sum") / kept.clamp_min(1)
    dice_loss = DiceLoss(mode="multiclass", classes=list(range(1, logits.shape[1])),
                         ignore_index=IGNORE_ID, from_logits=True)
    return ce, dice_loss(logits, ids)


def mask_loss(logits: Tensor, target: Tensor) -> Tensor:
    """L_mask(Y, M) averaged over the batch: BCE + Dice of one logit map (B,1,H,W) and its
    0/1 target (B,1,H,W); with K logit maps (B,K,H,W), K >= 2, cross-entropy + foreground
    Dice of the class ids (B,1,H,W) (:func:`multiclass_parts`)."""
    if logits.ndim == 4 and logits.shape[1] > 1:
        ce, dice_loss = multiclass_parts(logits, target)
        return ce + dice_loss
    check_shapes(logits, target)
    return per_image_mask_loss(logits, target).mean()


@register_loss("bce-dice", description="BCE + soft Dice on the mask, per image (ConDSeg's L_mask)")
class BceDiceLoss(Loss):
    multiclass = "cross-entropy + soft Dice over the foreground classes (smp DiceLoss)"

    def forward(self, outputs: Mapping[str, ModelOutput], target: Tensor) -> dict[str, Tensor]:
        return {"loss": mask_loss(outputs["image"].mask, target)}
