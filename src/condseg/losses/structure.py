"""The structure loss of MSNet, M2SNet and CHNet: weighted BCE + weighted IoU, the definitions
of PraNet and F3Net that the M2SNet paper adopts (its Eq. 4), optionally + LossNet.

For a target Y and probabilities P = σ(logits), both (H, W) maps of one image:

    w    = 1 + 5·|avgpool31(Y) − Y|   (31×31 mean, stride 1, zero padding 15 counted in the mean)
    wBCE = Σ w·bce(logits, Y) / Σ w
    wIoU = 1 − (Σ w·P·Y + 1) / (Σ w·(P + Y) − Σ w·P·Y + 1)

per image, then the batch mean, in float32, from logits (as ``condseg.losses.mask``). The weight
is largest near the mask's boundary, where the 31×31 neighbourhood is mixed.

With K >= 2 classes (docs/decisions.md) BCE becomes cross-entropy and the IoU term is the mean
over the foreground classes c of wIoU(P_c, Y_c) on the softmax probabilities, with
w = 1 + 5·max_c |avgpool31(Y_c) − Y_c| over the foreground one-hot maps (0 at ignored
pixels); LossNet is the mean of its value on each foreground class's (P_c, Y_c). For K = 2
this is the binary loss of the logit difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from condseg.data.labels import IGNORE_ID
from condseg.errors import LossError
from condseg.losses.base import Loss, register_loss
from condseg.losses.mask import check_classes, check_shapes, one_hot
from condseg.models.base import ModelOutput


def structure_parts(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image (wBCE, wIoU), each of shape (B,); logits and target are (B,1,H,W)."""
    check_shapes(logits, target)
    logits, target = logits.float(), target.float()
    weight = 1 + 5 * (F.avg_pool2d(target, 31, stride=1, padding=15) - target).abs()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    wbce = (weight * bce).flatten(1).sum(1) / weight.flatten(1).sum(1)
    prob = torch.sigmoid(logits)
    inter = (weight * prob * target).flatten(1).sum(1)
    union = (weight * (prob + target)).flatten(1).sum(1)
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return wbce, wiou


def multiclass_structure_parts(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image (wCE, wIoU), each (B,), of K-class logits (B,K,H,W) and class ids (B,1,H,W);
    ignored pixels weigh 0."""
    check_classes(logits, target)
    logits = logits.float()
    hot, kept = one_hot(target, logits.shape[1])
    fg = hot[:, 1:]
    edge = (F.avg_pool2d(fg, 31, stride=1, padding=15) - fg).abs().amax(1, keepdim=True)
    weight = (1 + 5 * edge) * kept
    ce = F.cross_entropy(logits, target[:, 0].long(), ignore_index=IGNORE_ID, reduction="none")
    wce = (weight[:, 0] * ce).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1)
    prob = logits.softmax(1)[:, 1:]
    inter = (weight * prob * fg).flatten(2).sum(2)
    union = (weight * (prob + fg)).flatten(2).sum(2)
    wiou = (1 - (inter + 1) / (union - inter + 1)).mean(1)
    return wce, wiou


def lossnet_maps(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """What LossNet compares: the probability map and the target (B,1,H,W); with K classes
    each foreground class's softmax probability and one-hot map (B·(K−1),1,H,W), ignored
    pixels 0 in both."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits), target.float()
    hot, kept = one_hot(target, logits.shape[1])
    prob = logits.softmax(1)[:, 1:] * kept
    return prob.flatten(0, 1)[:, None], hot[:, 1:].flatten(0, 1)[:, None]


@register_loss("structure",
               description="weighted BCE + weighted IoU (MSNet, M2SNet, CHNet), + LossNet")
class StructureLoss(Loss):
    """wBCE + wIoU, plus ``lossnet_weight`` · LossNet (frozen ImageNet VGG-16 features) when
    ``lossnet``; ``lossnet_weights`` is a local VGG-16 file for machines without network."""

    multiclass = ("boundary-weighted cross-entropy + boundary-weighted IoU per foreground class "
                  "(softmax), LossNet (when on) per foreground class; K = 2 is the binary loss")

    def __init__(self, lossnet: bool = False, lossnet_weight: float = 0.1,
                 lossnet_weights: str | Path | None = None) -> None:
        super().__init__()
        if lossnet_weight < 0:
            raise LossError(f"loss.options.lossnet_weight must be >= 0, got {lossnet_weight}")
        if lossnet_weights is not None and not lossnet:
            raise LossError(
                f"loss.options.lossnet_weights={lossnet_weights} is given but LossNet is off; "
                "set loss.options.lossnet=true, or drop loss.options.lossnet_weights"
            )
        self.lossnet_weight = lossnet_weight
        self.lossnet = None
        if lossnet:
            from condseg.losses.lossnet import LossNet  # torchvision only when asked for

            self.lossnet = LossNet(lossnet_weights)

    def forward(self, outputs: Mapping[str, ModelOutput], target: Tensor) -> dict[str, Tensor]:
        logits = outputs["image"].mask
        several = logits.shape[1] > 1
        parts_of = multiclass_structure_parts if several else structure_parts
        weighted, wiou = parts_of(logits, target)  # wCE with K classes, wBCE with one
        loss = (weighted + wiou).mean()
        parts = {"wce" if several else "wbce": weighted.mean(), "wiou": wiou.mean()}
        if self.lossnet is not None:
            parts["lossnet"] = self.lossnet(*lossnet_maps(logits, target))
            loss = loss + self.lossnet_weight * parts["lossnet"]
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}
