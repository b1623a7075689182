"""ConDSeg losses (paper Eqs. 5–10 and 15) with the decisions of DESIGN.md §4, and their
registrations: ``condseg-cr`` (stage 1, Consistency Reinforcement) and ``condseg-sid`` (stage 2).

Per image, then the batch mean, in float32, from logits — as L_mask in ``condseg.losses.mask``.
Both are binary by design, as ConDSeg and Net_0 are: several classes are refused.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from condseg.errors import LossError
from condseg.losses.base import Loss, register_loss
from condseg.losses.mask import (
    bce,
    check_shapes,
    per_image_mask_loss,
    pixel_mean,
)
from condseg.models.base import ModelOutput

__all__ = ["consistency_loss", "stage1_loss", "stage2_loss"]


def _consistency(logits1: Tensor, logits2: Tensor, threshold: float) -> Tensor:
    """Per-image L_cons (Eq. 6); each view is the other's binarised, constant target."""
    with torch.no_grad():
        b1 = (torch.sigmoid(logits1.float()) >= threshold).float()
        b2 = (torch.sigmoid(logits2.float()) >= threshold).float()
    return 0.5 * (bce(logits1, b2) + bce(logits2, b1))


def consistency_loss(logits1: Tensor, logits2: Tensor, threshold: float = 0.5) -> Tensor:
    """L_cons between two views of the same images, averaged over the batch.

    The binarised targets B(M, t) carry no gradient: each view is pulled towards the other's
    decision, never the other way through the target.
    """
    check_shapes(logits1, logits2, "logits1 and logits2")
    return _consistency(logits1, logits2, threshold).mean()


def stage1_loss(
    logits1: Tensor, logits2: Tensor, target: Tensor, threshold: float = 0.5
) -> dict[str, Tensor]:
    """L_stage1 = L_mask(Y, M1) + L_mask(Y, M2) + L_cons (Eq. 7) for Net_0 on X and Aug(X).

    Returns ``loss`` (with its graph) and the batch-mean parts ``mask1``, ``mask2``, ``cons``
    (detached, for logging).
    """
    check_shapes(logits1, target, "logits1 and target")
    check_shapes(logits2, target, "logits2 and target")
    mask1 = per_image_mask_loss(logits1, target)
    mask2 = per_image_mask_loss(logits2, target)
    cons = _consistency(logits1, logits2, threshold)
    return {
        "loss": (mask1 + mask2 + cons).mean(),
        "mask1": mask1.mean().detach(),
        "mask2": mask2.mean().detach(),
        "cons": cons.mean().detach(),
    }


def _beta(logits: Tensor, min_mean: float) -> Tensor:
    """Per-image β = 1/tanh(mean prob) (Eq. 9), mean clamped at `min_mean`, no gradient.

    The clamp keeps β finite (≤ 1/tanh(min_mean)) for the empty predictions that occur early in
    training and on images without foreground.
    """
    with torch.no_grad():
        mean = pixel_mean(torch.sigmoid(logits.float())).clamp_min(min_mean)
        return 1 / torch.tanh(mean)


def stage2_loss(out: ModelOutput, target: Tensor, min_mean: float = 0.01) -> dict[str, Tensor]:
    """L_stage2 = L_mask(Y, M) + β1·L_fg + β2·L_bg + L_compl (Eq. 15), per image, batch mean.

    ``out`` has the mask logits and the SID logit maps ``aux["fg"|"bg"|"uc"]``, all (B,1,H,W);
    without SID maps (the Table-4 baseline) the loss is L_mask alone. The background branch is
    supervised by 1 − Y of the (augmented) target, and L_compl is Eq. 10 on the three sigmoid
    maps. Returns ``loss`` (with its graph) and detached batch means of the parts: ``mask``,
    ``fg``, ``bg`` (unweighted by β), ``compl``, ``beta_fg``, ``beta_bg``.
    """
    if min_mean <= 0:
        raise LossError(
            f"loss.options.min_mean must be > 0 so that beta stays finite; got {min_mean}")
    check_shapes(out.mask, target, "out.mask and target")
    target = target.float()
    mask = per_image_mask_loss(out.mask, target)
    if "fg" not in out.aux:  # the Table-4 baseline has no SID: only the mask is supervised
        return {"loss": mask.mean(), "mask": mask.mean().detach()}
    sid = {key: out.aux[key] for key in ("fg", "bg", "uc")}
    for name, logits in sid.items():
        check_shapes(logits, target, f"out.aux[{name!r}] and target")
    fg = per_image_mask_loss(sid["fg"], target)
    bg = per_image_mask_loss(sid["bg"], 1 - target)
    beta_fg = _beta(sid["fg"], min_mean)
    beta_bg = _beta(sid["bg"], min_mean)
    p_fg, p_bg, p_uc = (torch.sigmoid(x.float()) for x in sid.values())
    compl = pixel_mean(p_fg * p_bg + p_fg * p_uc + p_bg * p_uc)
    loss = (mask + beta_fg * fg + beta_bg * bg + compl).mean()
    parts = {
        "mask": mask,
        "fg": fg,
        "bg": bg,
        "compl": compl,
        "beta_fg": beta_fg,
        "beta_bg": beta_bg,
    }
    return {"loss": loss, **{k: v.mean().detach() for k, v in parts.items()}}


def _refuse_classes(loss: str, logits: Tensor) -> None:
    if logits.ndim == 4 and logits.shape[1] != 1:
        raise LossError(f"loss {loss!r} is binary by design (SID decouples foreground from "
                        f"background): it takes one logit map, not {logits.shape[1]}; use a "
                        "method that takes classes (condseg methods)")


@register_loss("condseg-cr",
               description="ConDSeg stage 1: L_mask on both views + consistency (Eq. 7)")
class ConsistencyLoss(Loss):
    """Net_0 on the image and its strong view; ``consistency=False`` is L_mask on the image
    alone (Table 3's Net_0 without CR), which needs no strong view."""

    binary_only = True

    def __init__(self, consistency: bool = True, threshold: float = 0.5) -> None:
        super().__init__()
        self.consistency = consistency
        self.threshold = threshold
        self.views = ("strong",) if consistency else ()

    def forward(self, outputs: Mapping[str, ModelOutput], target: Tensor) -> dict[str, Tensor]:
        _refuse_classes("condseg-cr", outputs["image"].mask)
        if not self.consistency:
            check_shapes(outputs["image"].mask, target)
            return {"loss": per_image_mask_loss(outputs["image"].mask, target).mean()}
        return stage1_loss(outputs["image"].mask, outputs["strong"].mask, target, self.threshold)


@register_loss("condseg-sid",
               description="ConDSeg stage 2: L_mask + β-weighted SID losses + L_compl")
class DecouplingLoss(Loss):
    binary_only = True

    def __init__(self, min_mean: float = 0.01) -> None:
        super().__init__()
        self.min_mean = min_mean

    def forward(self, outputs: Mapping[str, ModelOutput], target: Tensor) -> dict[str, Tensor]:
        _refuse_classes("condseg-sid", outputs["image"].mask)
        return stage2_loss(outputs["image"], target, self.min_mean)
