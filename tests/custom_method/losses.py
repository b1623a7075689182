"""The loss: BCE with a foreground weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import condseg


@condseg.register_loss("weighted-bce", description="BCE with a foreground weight (a test loss)")
class WeightedBCE(condseg.Loss):
    def __init__(self, pos_weight: float = 1.0) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, outputs, target):
        weight = torch.tensor(self.pos_weight, device=target.device)
        return {"loss": F.binary_cross_entropy_with_logits(
            outputs["image"].mask.float(), target, pos_weight=weight)}
