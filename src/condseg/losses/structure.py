"""The structure loss of MSNet, M2SNet and CHNet: weighted BCE + weighted IoU, the definitions
of PraNet and F3Net that the M2SNet paper adopts (its Eq. 4), optionally + LossNet.

For a target Y and probabilities P = σ(logits), both (H, W) maps of one image:

    w    = 1 + 5·|avgpool31(Y) − Y|   (31×31 mean, stride 1, zero padding 15 counted in the mean)
    wBCE = Σ w·bce(logits, Y) / Σ w
    wIoU = 1 − (Σ w·P·Y + 1) / (Σ w·(P + Y) − Σ w·P·Y + 1)

per image, then the batch mean, in float32, from logits (as ``condseg.losses.mask``). The weight
is largest near the mask's boundary, where the 31×31 neighbourhood is mixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from condseg.errors import LossError
from condseg.losses.base import Loss, register_loss
from condseg.losses.mask import check_shapes
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


@register_loss("structure",
               description="weighted BCE + weighted IoU (MSNet, M2SNet, CHNet), + LossNet")
class StructureLoss(Loss):
    """wBCE + wIoU, plus ``lossnet_weight`` · LossNet (frozen ImageNet VGG-16 features) when
    ``lossnet``; ``lossnet_weights`` is a local VGG-16 file for machines without network."""

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
        wbce, wiou = structure_parts(logits, target)
        loss = (wbce + wiou).mean()
        parts = {"wbce": wbce.mean(), "wiou": wiou.mean()}
        if self.lossnet is not None:
            parts["lossnet"] = self.lossnet(torch.sigmoid(logits.float()), target.float())
            loss = loss + self.lossnet_weight * parts["lossnet"]
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}
