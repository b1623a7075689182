"""Net_0: the stage-1 network of Consistency Reinforcement — the encoder plus a light head."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from condseg.methods.condseg.model import BINARY_BY_DESIGN
from condseg.models.base import ModelOutput, SegmentationModel, refuse_classes
from condseg.models.blocks import CBR, resize
from condseg.models.encoders import create_encoder, encoder_channels
from condseg.models.registry import register_model


@register_model("condseg-net0", description="Net_0, the stage-1 network of CR",
                defaults={"encoder": "resnet50"})
class Net0(SegmentationModel):
    """Each encoder level upsampled to the input size, CBR(c, 64, 1), concat, Conv1×1 → logits.

    Its ``encoder`` (parameters and BatchNorm buffers) is what stage 2 loads.
    """

    def __init__(
        self,
        encoder: str = "resnet50",
        pretrained: bool = False,
        weights: str | Path | None = None,
        side_width: int = 64,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        refuse_classes("Net_0 (ConDSeg's stage 1)", num_classes, BINARY_BY_DESIGN)
        self.encoder = create_encoder(encoder, pretrained, weights)
        self.input_divisor = max(self.encoder.feature_info.reduction())
        channels = encoder_channels(self.encoder)
        self.sides = nn.ModuleList(CBR(c, side_width, 1) for c in channels)
        self.classifier = nn.Conv2d(len(channels) * side_width, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        size = x.shape[-2:]
        feats = self.encoder(x)
        sides = [self._side(side, f, size) for side, f in zip(self.sides, feats, strict=True)]
        return ModelOutput(self.classifier(torch.cat(sides, dim=1)))

    @staticmethod
    def _side(side: CBR, f: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """BN(conv1×1(up(f))) computed as BN(up(conv1×1(f))): a bias-free 1×1 convolution and
        bilinear upsampling are both linear and act on different axes, so they commute. Upsampling
        64 channels instead of up to 1024 makes this ~10× cheaper; BatchNorm still sees the
        upsampled map, so train-mode statistics are those of the specified order."""
        conv, bn, relu = side
        return relu(bn(resize(conv(f), size)))
