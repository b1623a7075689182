"""The paper's loss: cross-entropy + 0.01 · PDCR (Liu et al., §III and §V-A).

Cross-entropy of the binary mask is BCE on the model's one logit — the same as a two-class
softmax cross-entropy on the logits (0, z). PDCR (Eq. 12) is computed from the terms the
``pdcr`` plug-in puts into the auxiliary outputs (:mod:`condseg.methods.pdcr_uafr.pdcr`) and the
target mask, all pairs of a term at once:

* foreground ratio φ of each patch (Eq. 4) over M = 2 classes (background, foreground), the
  part of a patch outside the image left out;
* affinity w_ij(k) = 1 − (1/M) Σ_m |φ_i^m(k) − φ_j^m(k)| (Eq. 3), for M = 2 just 1 − |r_i − r_j|;
* cosine similarity s_ij(k) of the vectors, each with its patch's position (min-x, max-x, min-y,
  max-y as fractions of the image side) appended (§III-B);
* ℓ_ij(k) = −log(exp(s_ij w_ij / τ) / Σ_n exp(s_in (1 − w_in) / τ)).

A term is the mean of ℓ over i, j, k (Eq. 12 writes the sum: at N = 128 the sum of 49 152
pairs would outweigh the cross-entropy a thousandfold even at weight 0.01), each image alone,
then the batch mean; the terms are summed as in Eq. 12.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from condseg.errors import LossError
from condseg.losses.base import Loss, register_loss
from condseg.losses.mask import bce, check_shapes
from condseg.methods.pdcr_uafr.pdcr import Term, terms_of
from condseg.models.base import ModelOutput


def patch_ratios(mask: Tensor, boxes: Tensor) -> Tensor:
    """Foreground ratio (B, N, P) of each (y0, x0, y1, x1) box of ``boxes`` (N, P, 4) in
    ``mask`` (B, 1, H, W), from its integral image; an empty box has ratio 0."""
    integral = F.pad(mask[:, 0].double().cumsum(1).cumsum(2), (1, 0, 1, 0))
    flat = integral.flatten(1)
    width = integral.shape[-1]
    y0, x0, y1, x1 = boxes.unbind(-1)

    def at(y: Tensor, x: Tensor) -> Tensor:
        return flat[:, (y * width + x).flatten()].view(mask.shape[0], *y.shape)

    inside = at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)
    area = ((y1 - y0) * (x1 - x0)).clamp(min=1)
    return (inside / area).float()


def class_ratios(foreground: Tensor) -> Tensor:
    """φ over the M = 2 classes (background, foreground) from the foreground ratio: (..., 2)."""
    return torch.stack([1 - foreground, foreground], dim=-1)


def affinity(phi_a: Tensor, phi_b: Tensor) -> Tensor:
    """Eq. 3: w (B, P, N_a, N_b) from φ_a (B, N_a, P, M) and φ_b (B, N_b, P, M)."""
    a = phi_a.permute(0, 2, 1, 3)[:, :, :, None]
    b = phi_b.permute(0, 2, 1, 3)[:, :, None]
    return 1 - (a - b).abs().mean(-1)


def patch_positions(boxes: Tensor, height: int, width: int) -> Tensor:
    """(N, P, 4): min-x, max-x, min-y, max-y of each box's pixels as fractions of the image."""
    y0, x0, y1, x1 = boxes.float().unbind(-1)
    return torch.stack([x0 / width, (x1 - 1) / width, y0 / height, (y1 - 1) / height], -1)


def similarities(a: Tensor, b: Tensor, pos_a: Tensor | None, pos_b: Tensor | None) -> Tensor:
    """Cosine similarities (B, P, N_a, N_b) of vectors (B, N, C), with each patch's position
    appended when given ((N, P, 4)); (B, 1, N_a, N_b) without positions."""
    def rows(v: Tensor, pos: Tensor | None) -> Tensor:
        v = v.float()[:, None]  # (B, 1, N, C)
        if pos is not None:
            pos = pos.permute(1, 0, 2)[None].expand(v.shape[0], -1, -1, -1)  # (B, P, N, 4)
            v = torch.cat([v.expand(-1, pos.shape[1], -1, -1), pos], dim=-1)
        return F.normalize(v, dim=-1, eps=1e-8)

    return rows(a, pos_a) @ rows(b, pos_b).transpose(-1, -2)


def dragsaw(s: Tensor, w: Tensor, tau: float = 1.0) -> Tensor:
    """Per-image mean over (k, i, j) of −log(exp(s_ij w_ij/τ) / Σ_n exp(s_in (1 − w_in)/τ))."""
    s, w = torch.broadcast_tensors(s, w)
    log_denominator = torch.logsumexp(s * (1 - w) / tau, dim=-1, keepdim=True)
    return (log_denominator - s * w / tau).flatten(1).mean(1)


def term_loss(term: Term, target: Tensor, tau: float = 1.0, position: bool = True) -> Tensor:
    """One term of Eq. 12 (mean over pairs and patches, then over the batch)."""
    height, width = target.shape[-2:]
    mask = (target >= 0.5).float()
    w = affinity(class_ratios(patch_ratios(mask, term.boxes_a)),
                 class_ratios(patch_ratios(mask, term.boxes_b)))
    pos_a = patch_positions(term.boxes_a, height, width) if position else None
    pos_b = patch_positions(term.boxes_b, height, width) if position else None
    return dragsaw(similarities(term.a, term.b, pos_a, pos_b), w, tau).mean()


@register_loss("ce", description="cross-entropy of the mask: BCE on the one logit, per image")
class CrossEntropyLoss(Loss):
    def forward(self, outputs: Mapping[str, ModelOutput], target: Tensor) -> dict[str, Tensor]:
        logits = outputs["image"].mask
        check_shapes(logits, target)
        return {"loss": bce(logits, target).mean()}


@register_loss("ce-pdcr", description="cross-entropy + weight · PDCR (needs the pdcr plug-in)")
class CePdcrLoss(CrossEntropyLoss):
    """CE + ``weight`` · Σ_terms PDCR, at temperature ``tau``; ``position`` appends each
    patch's position to its vector (the paper's patch position encoding)."""

    def __init__(self, weight: float = 0.01, tau: float = 1.0, position: bool = True) -> None:
        super().__init__()
        if tau <= 0:
            raise LossError(f"loss.options.tau must be positive, got {tau}")
        self.weight, self.tau, self.position = weight, tau, position

    def forward(self, outputs: Mapping[str, ModelOutput], target: Tensor) -> dict[str, Tensor]:
        ce = super().forward(outputs, target)["loss"]
        terms = terms_of(outputs["image"].aux)
        if not terms:
            raise LossError(
                "loss ce-pdcr found no PDCR features in the model's outputs: add the pdcr "
                "plug-in (model.options.plugins.pdcr={}) or use the loss ce")
        pdcr = sum(term_loss(term, target, self.tau, self.position) for term in terms)
        return {"loss": ce + self.weight * pdcr, "ce": ce.detach(), "pdcr": pdcr.detach()}
