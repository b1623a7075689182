"""The network: two strided convolutions and a 1×1 head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import condseg


@condseg.register_model("tiny-fcn", description="two strided convolutions (a test method)")
class TinyFCN(condseg.SegmentationModel):
    input_divisor = 4  # two stride-2 convolutions

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> condseg.ModelOutput:
        logits = F.interpolate(self.head(self.encoder(x)), size=x.shape[-2:], mode="bilinear")
        return condseg.ModelOutput(logits)
