"""ConDSeg losses (paper Eqs. 2–10 and 15) with the decisions of DESIGN.md §4.

Every loss is computed per image and then averaged over the batch, so that a small lesion in one
image is not diluted by a large one in another (the pooled Dice would be dominated by the larger
mask). Losses take logits: BCE uses the log-sum-exp form, and all arithmetic runs in float32 even
under bf16 autocast, where the sums of a Dice term would otherwise lose most of their digits.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["consistency_loss", "mask_loss", "stage1_loss", "stage2_loss"]


class SIDOutput(Protocol):
    """What `stage2_loss` needs from the model output (ConDSegOutput satisfies it)."""

    mask: Tensor
    fg: Tensor | None
    bg: Tensor | None
    uc: Tensor | None


def _check(a: Tensor, b: Tensor, names: str = "logits and target") -> None:
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(
            f"{names} must both be (B,1,H,W) of the same shape; got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


def _pixel_mean(x: Tensor) -> Tensor:
    """Mean over all but the batch dimension: one value per image."""
    return x.flatten(1).mean(1)


def _bce(logits: Tensor, target: Tensor) -> Tensor:
    """Per-image BCE (Eq. 2) from logits, float32."""
    return _pixel_mean(
        F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    )


def _dice(logits: Tensor, target: Tensor) -> Tensor:
    """Per-image soft Dice loss (Eq. 3) with smoothing 1, so empty masks stay defined."""
    prob = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    inter = (prob * target).sum(1)
    return 1 - (2 * inter + 1) / (prob.sum(1) + target.sum(1) + 1)


def _mask(logits: Tensor, target: Tensor) -> Tensor:
    """Per-image L_mask = BCE + Dice (Eq. 4)."""
    return _bce(logits, target) + _dice(logits, target)


def mask_loss(logits: Tensor, target: Tensor) -> Tensor:
    """L_mask(Y, M) averaged over the batch; logits and target are (B,1,H,W)."""
    _check(logits, target)
    return _mask(logits, target).mean()


def _consistency(logits1: Tensor, logits2: Tensor, threshold: float) -> Tensor:
    """Per-image L_cons (Eq. 6); each view is the other's binarised, constant target."""
    with torch.no_grad():
        b1 = (torch.sigmoid(logits1.float()) >= threshold).float()
        b2 = (torch.sigmoid(logits2.float()) >= threshold).float()
    return 0.5 * (_bce(logits1, b2) + _bce(logits2, b1))


def consistency_loss(logits1: Tensor, logits2: Tensor, threshold: float = 0.5) -> Tensor:
    """L_cons between two views of the same images, averaged over the batch.

    The binarised targets B(M, t) carry no gradient: each view is pulled towards the other's
    decision, never the other way through the target.
    """
    _check(logits1, logits2, "logits1 and logits2")
    return _consistency(logits1, logits2, threshold).mean()


def stage1_loss(
    logits1: Tensor, logits2: Tensor, target: Tensor, threshold: float = 0.5
) -> dict[str, Tensor]:
    """L_stage1 = L_mask(Y, M1) + L_mask(Y, M2) + L_cons (Eq. 7) for Net_0 on X and Aug(X).

    Returns ``loss`` (with its graph) and the batch-mean parts ``mask1``, ``mask2``, ``cons``
    (detached, for logging).
    """
    _check(logits1, target, "logits1 and target")
    _check(logits2, target, "logits2 and target")
    mask1 = _mask(logits1, target)
    mask2 = _mask(logits2, target)
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
        mean = _pixel_mean(torch.sigmoid(logits.float())).clamp_min(min_mean)
        return 1 / torch.tanh(mean)


def stage2_loss(out: SIDOutput, target: Tensor, min_mean: float = 0.01) -> dict[str, Tensor]:
    """L_stage2 = L_mask(Y, M) + β1·L_fg + β2·L_bg + L_compl (Eq. 15), per image, batch mean.

    `out` has logits ``mask``, ``fg``, ``bg``, ``uc`` of shape (B,1,H,W) — a ConDSegOutput;
    when ``fg`` is None (the Table-4 baseline, which has no SID) the loss is L_mask alone.
    The background branch is supervised by 1 − Y of the (augmented) target, and L_compl is
    Eq. 10 on the three sigmoid maps. Returns ``loss`` (with its graph) and detached batch means
    of the parts: ``mask``, ``fg``, ``bg`` (unweighted by β), ``compl``, ``beta_fg``, ``beta_bg``.
    """
    if min_mean <= 0:
        raise ValueError(f"min_mean must be > 0 so that beta stays finite; got {min_mean}")
    if out.fg is None:  # the Table-4 baseline has no SID: only the mask is supervised
        _check(out.mask, target, "out.mask and target")
        mask = _mask(out.mask, target.float())
        return {"loss": mask.mean(), "mask": mask.mean().detach()}
    for name in ("mask", "fg", "bg", "uc"):
        _check(getattr(out, name), target, f"out.{name} and target")
    target = target.float()
    mask = _mask(out.mask, target)
    fg = _mask(out.fg, target)
    bg = _mask(out.bg, 1 - target)
    beta_fg = _beta(out.fg, min_mean)
    beta_bg = _beta(out.bg, min_mean)
    p_fg, p_bg, p_uc = (torch.sigmoid(x.float()) for x in (out.fg, out.bg, out.uc))
    compl = _pixel_mean(p_fg * p_bg + p_fg * p_uc + p_bg * p_uc)
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
