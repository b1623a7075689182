"""CHNet (Wei et al., "Only Classification Head is Sufficient for Medical Image Segmentation"):
a Res2Net-50 26w4s without its last stage and a pixel classification head."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from condseg.models.base import ModelOutput, SegmentationModel, mask_channels
from condseg.models.encoders import create_encoder, encoder_channels, encoder_reductions
from condseg.models.registry import register_model

#: Channels of each level after its Conv1×1, and of the head's hidden layer.
WIDTH, HIDDEN = 64, 32


@register_model("chnet", description="CHNet, Res2Net-50 26w4s without stage 4 (authors' code)",
                defaults={"encoder": "res2net50_26w_4s"})
class CHNet(SegmentationModel):
    """Mask logits at the input size of a (B, 3, H, W) tensor, H and W multiples of the
    deepest level's stride (16).

    Each of the encoder's four levels goes through a Conv1×1 to 64 channels and a
    bilinear resize to the input size; their concatenation goes through the head
    Conv1×1 → ReLU → BatchNorm → Conv1×1 (the authors' order: the BatchNorm after the ReLU),
    the last one to one logit map, or one per class (``num_classes``).
    """

    def __init__(
        self,
        encoder: str = "res2net50_26w_4s",
        pretrained: bool = False,
        weights: str | Path | None = None,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = create_encoder(encoder, pretrained, weights)
        self.input_divisor = encoder_reductions(self.encoder)[-1]
        channels = encoder_channels(self.encoder)
        self.reduce = nn.ModuleList(nn.Conv2d(c, WIDTH, 1) for c in channels)
        self.classifier = nn.Sequential(
            nn.Conv2d(WIDTH * len(channels), HIDDEN, 1), nn.ReLU(inplace=True),
            nn.BatchNorm2d(HIDDEN), nn.Conv2d(HIDDEN, mask_channels(num_classes), 1),
        )

    def forward(self, x: torch.Tensor) -> ModelOutput:
        size = x.shape[-2:]
        maps = [F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False)
                for conv, f in zip(self.reduce, self.encoder(x), strict=True)]
        return ModelOutput(self.classifier(torch.cat(maps, dim=1)))
