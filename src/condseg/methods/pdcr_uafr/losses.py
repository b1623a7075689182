"""The paper's loss: cross-entropy + 0.01 · PDCR (Liu et al., §III and §V-A), for M classes.

Cross-entropy: of a binary model (one logit) BCE — the same as a two-class softmax
cross-entropy on the logits (0, z); of a K-class model (K logits incl. background) the K-class
cross-entropy, ignored pixels (:data:`IGNORE_ID`) left out. Each image's mean, then the batch's.

PDCR (Eq. 12) is computed by :func:`pdcr_loss` from the terms of the ``pdcr`` plug-in (or of a
:class:`~condseg.methods.pdcr_uafr.pdcr.PatchDragsaw`) and the target, 2-D or 3-D, all pairs of
a term at once:

* φ of each patch (Eq. 4): its vector of M class ratios — the pixels of each class over the
  patch's labelled pixels, from integral images of the classes' indicator maps (exact integer
  counts, any patch size, the part of a patch outside the image left out); ignored pixels count
  in neither; background is 1 minus the others, so a patch without a labelled pixel counts as
  background (as an empty patch always did);
* affinity w_ij(k) = 1 − (1/M) Σ_m |φ_i^m(k) − φ_j^m(k)| (Eq. 3), for M = 2 just 1 − |r_i − r_j|;
* cosine similarity s_ij(k) of the vectors, each with its patch's position appended (min and
  max of x, then of y (then of z), as fractions of the image side; §III-B);
* ℓ_ij(k) = −log(exp(s_ij w_ij / τ) / Σ_n exp(s_in (1 − w_in) / τ)).

A term is the mean of ℓ over i, j, k (Eq. 12 writes the sum: at N = 128 the sum of 49 152
pairs would outweigh the cross-entropy a thousandfold even at weight 0.01), each image alone,
then the batch mean; the terms are summed as in Eq. 12.

Outside condseg (e.g. an nnU-Net trainer): ``pdcr_loss(terms, target, classes=K)`` with
``target`` (B, 1, *spatial) int64 class ids (``ignore`` for none) at the input's resolution and
K the network's outputs incl. background; add ``0.01 ×`` it to the host's loss.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from condseg.data.labels import IGNORE_ID
from condseg.errors import LossError
from condseg.losses.base import Loss, register_loss
from condseg.losses.mask import bce, check_shapes
from condseg.methods.pdcr_uafr.pdcr import Term, terms_of
from condseg.models.base import ModelOutput


def class_ids(target: Tensor, classes: int, ignore: int = IGNORE_ID) -> Tensor:
    """Class ids of a target: integer ids as they are; a float target is condseg's binary mask
    (thresholded at 0.5) for M = 2, else ids stored as floats (nnU-Net's), rounded."""
    if not target.is_floating_point():
        return target.long()
    ids = (target >= 0.5).long() if classes == 2 else target.round().long()
    return ids.masked_fill(target == ignore, ignore)


def class_integrals(target: Tensor, classes: int, ignore: int = IGNORE_ID) -> Tensor:
    """Integral images (B, M, *(spatial + 1)), int32, of the indicator maps of classes
    1..M−1 and of the labelled pixels (not ``ignore``) of ``target`` (B, 1, *spatial)."""
    ids = class_ids(target, classes, ignore)
    dims = ids.ndim - 2
    wanted = torch.arange(1, classes, device=ids.device).view(1, -1, *[1] * dims)
    maps = torch.cat([ids == wanted, ids != ignore], dim=1).int()
    for axis in range(2, maps.ndim):
        maps = maps.cumsum(axis, dtype=torch.int32)
    return F.pad(maps, (1, 0) * dims)


def box_sums(integrals: Tensor, boxes: Tensor) -> Tensor:
    """Sums (B, M, N, P) of each map over each box of ``boxes`` (N, P, 2·d), the d starts
    then the d ends, from the integral images (B, M, *(spatial + 1)): the signed sum of the 2^d
    corners."""
    dims = boxes.shape[-1] // 2
    corners = torch.tensor(list(itertools.product((0, 1), repeat=dims)), device=boxes.device)
    sign = torch.where(corners.sum(1) % 2 == dims % 2, 1, -1)  # (2^d,)
    coord = torch.where(corners[:, None, None].bool(), boxes[None, ..., dims:],
                        boxes[None, ..., :dims])  # (2^d, N, P, d)
    sizes = integrals.shape[2:]
    strides = torch.tensor([math.prod(sizes[a + 1:]) for a in range(dims)], device=boxes.device)
    flat = integrals.flatten(2)[:, :, (coord * strides).sum(-1).flatten()]
    flat = flat.view(*integrals.shape[:2], *coord.shape[:3])
    return (flat * sign.view(-1, 1, 1)).sum(2)


def class_ratios(integrals: Tensor, boxes: Tensor) -> Tensor:
    """φ (B, N, P, M) of each box (Eq. 4): class 0 (background) first."""
    sums = box_sums(integrals, boxes)
    foreground = sums[:, :-1].float() / sums[:, -1:].clamp(min=1).float()
    phi = torch.cat([1 - foreground.sum(1, keepdim=True), foreground], dim=1)
    return phi.permute(0, 2, 3, 1)


def affinity(phi_a: Tensor, phi_b: Tensor) -> Tensor:
    """Eq. 3: w (B, P, N_a, N_b) from φ_a (B, N_a, P, M) and φ_b (B, N_b, P, M)."""
    a = phi_a.permute(0, 2, 1, 3)[:, :, :, None]
    b = phi_b.permute(0, 2, 1, 3)[:, :, None]
    return 1 - (a - b).abs().mean(-1)


def patch_positions(boxes: Tensor, size: Sequence[int]) -> Tensor:
    """(N, P, 2·d): min and max of each box's pixels as fractions of the image, x first."""
    dims = len(size)
    edges = boxes.float().unbind(-1)
    return torch.stack([value for axis in reversed(range(dims))
                        for value in (edges[axis] / size[axis],
                                      (edges[dims + axis] - 1) / size[axis])], -1)


def similarities(a: Tensor, b: Tensor, pos_a: Tensor | None, pos_b: Tensor | None) -> Tensor:
    """Cosine similarities (B, P, N_a, N_b) of vectors (B, N, C), with each patch's position
    appended when given ((N, P, 2·d)); (B, 1, N_a, N_b) without positions."""
    def rows(v: Tensor, pos: Tensor | None) -> Tensor:
        v = v.float()[:, None]  # (B, 1, N, C)
        if pos is not None:
            pos = pos.permute(1, 0, 2)[None].expand(v.shape[0], -1, -1, -1)  # (B, P, N, 2d)
            v = torch.cat([v.expand(-1, pos.shape[1], -1, -1), pos], dim=-1)
        return F.normalize(v, dim=-1, eps=1e-8)

    return rows(a, pos_a) @ rows(b, pos_b).transpose(-1, -2)


def dragsaw(s: Tensor, w: Tensor, tau: float = 1.0) -> Tensor:
    """Per-image mean over (k, i, j) of −log(exp(s_ij w_ij/τ) / Σ_n exp(s_in (1 − w_in)/τ))."""
    s, w = torch.broadcast_tensors(s, w)
    log_denominator = torch.logsumexp(s * (1 - w) / tau, dim=-1, keepdim=True)
    return (log_denominator - s * w / tau).flatten(1).mean(1)


def term_loss(
    term: Term, integrals: Tensor, size: Sequence[int], tau: float = 1.0, position: bool = True
) -> Tensor:
    """One term of Eq. 12 (mean over pairs and patches, then over the batch)."""
    w = affinity(class_ratios(integrals, term.boxes_a), class_ratios(integrals, term.boxes_b))
    pos_a = patch_positions(term.boxes_a, size) if position else None
    pos_b = patch_positions(term.boxes_b, size) if position else None
    return dragsaw(similarities(term.a, term.b, pos_a, pos_b), w, tau).mean()


def pdcr_loss(
    terms: Sequence[Term], target: Tensor, classes: int = 2, tau: float = 1.0,
    position: bool = True, ignore: int = IGNORE_ID,
) -> Tensor:
    """Σ over ``terms`` of Eq. 12 against ``target`` (B, 1, *spatial) at the input's
    resolution: class ids < ``classes`` (see :func:`class_ids`), ``ignore`` left out of the
    ratios."""
    integrals = class_integrals(target, classes, ignore)
    size = tuple(target.shape[2:])
    return sum(term_loss(term, integrals, size, tau, position) for term in terms)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """BCE of one logit against a 0/1 mask; K-class cross-entropy of K logits against class ids
    (ignored pixels left out); each image's mean over its pixels, then the batch mean."""
    if logits.shape[1] == 1:
        check_shapes(logits, target)
        return bce(logits, target).mean()
    if target.shape != (logits.shape[0], 1, *logits.shape[2:]):
        raise ValueError(f"logits (B,K,H,W) and target (B,1,H,W) must agree; got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    ids = target[:, 0].long()
    pixels = F.cross_entropy(logits.float(), ids, ignore_index=IGNORE_ID, reduction="none")
    labelled = (ids != IGNORE_ID).flatten(1).sum(1).clamp(min=1)
    return (pixels.flatten(1).sum(1) / labelled).mean()


@register_loss("ce", description="cross-entropy: BCE on one logit, K-class CE on K, per image")
class CrossEntropyLoss(Loss):
    def forward(self, outputs: Mapping[str, ModelOutput], target: Tensor) -> dict[str, Tensor]:
        return {"loss": cross_entropy(outputs["image"].mask, target)}


@register_loss("ce-pdcr", description="cross-entropy + weight · PDCR (needs the pdcr plug-in)")
class CePdcrLoss(CrossEntropyLoss):
    """CE + ``weight`` · Σ_terms PDCR, at temperature ``tau``; ``position`` appends each
    patch's position to its vector (the paper's patch position encoding). M is 2 for a binary
    model, K for a K-class one."""

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
        classes = max(2, outputs["image"].mask.shape[1])
        pdcr = pdcr_loss(terms, target, classes, self.tau, self.position)
        return {"loss": ce + self.weight * pdcr, "ce": ce.detach(), "pdcr": pdcr.detach()}
