"""MSNet (Zhao et al., MICCAI 2021) and M2SNet (its multi-scale successor): a Res2Net encoder,
a pyramid of subtraction units over five levels, and a top-down decoder — one network, the
``multiscale`` option choosing the unit. It follows the authors' code where that differs from
the paper (docs/models.md lists where)."""

from __future__ import annotations

import operator
from functools import reduce
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from condseg.errors import ModelError
from condseg.methods.msnet.subtraction import Difference, conv_bn_relu, resize_to
from condseg.models.base import ModelOutput, SegmentationModel, mask_channels
from condseg.models.encoders import create_encoder, encoder_channels, encoder_reductions
from condseg.models.registry import register_model

#: Strides of the five levels the network expects from its encoder (a ResNet's stem and stages).
STRIDES = [2, 4, 8, 16, 32]
LEVELS = 5
#: Channels of every level after reduction (the stem's own, which is not reduced).
WIDTH = 64


@register_model("msnet", description="MSNet, Res2Net-50 v1b encoder (authors' code)",
                defaults={"encoder": "res2net50d", "multiscale": False})
@register_model("m2snet", description="M2SNet, Res2Net-50 v1b encoder (authors' code)",
                defaults={"encoder": "res2net50d", "multiscale": True})
class MSNet(SegmentationModel):
    """Mask logits at the input size of a (B, 3, H, W) tensor, H and W multiples of 32 (one
    map, or ``num_classes`` from the last convolution).

    Levels 1..5 are the encoder's stem after its max-pool (stride 4) and stages 1..4, the
    last four reduced to 64 channels. ``units[k][i]`` is the unit of order k + 1 spanning
    levels i + 1 .. i + k + 2 (the authors' ``x{i+k+2}_…_x{i+1}``): order 1 subtracts two
    adjacent levels, each higher order two adjacent units of the order below (the fourth
    order's deeper input first passes through ``apex``). Level j's complementarity-enhanced
    feature sums the units whose span starts at level j, through ``fuse[j - 1]`` except at
    level 4; the decoder starts from ``deep`` (stage 4 reduced again) and adds them from level
    4 down to level 1.
    """

    input_divisor = STRIDES[-1]

    def __init__(
        self,
        encoder: str = "res2net50d",
        pretrained: bool = False,
        weights: str | Path | None = None,
        multiscale: bool = False,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = create_encoder(encoder, pretrained, weights, levels=LEVELS)
        if encoder_reductions(self.encoder) != STRIDES:
            raise ModelError(
                f"encoder {encoder!r} gives feature strides {encoder_reductions(self.encoder)}; "
                f"MSNet needs a ResNet-like encoder with strides {STRIDES} (e.g. res2net50d)"
            )
        channels = encoder_channels(self.encoder)
        if channels[0] != WIDTH:
            raise ModelError(f"encoder {encoder!r} has a {channels[0]}-channel stem; MSNet "
                             f"needs {WIDTH} (a ResNet-like encoder such as res2net50d)")
        self.reduce = nn.ModuleList(conv_bn_relu(c, WIDTH) for c in channels[1:])
        self.difference = Difference((3, 5) if multiscale else (), WIDTH)
        self.units = nn.ModuleList(
            nn.ModuleList(conv_bn_relu(WIDTH, WIDTH) for _ in range(LEVELS - order))
            for order in range(1, LEVELS)
        )
        self.apex = conv_bn_relu(WIDTH, WIDTH)
        self.fuse = nn.ModuleList(conv_bn_relu(WIDTH, WIDTH) for _ in range(LEVELS - 2))
        self.deep = conv_bn_relu(channels[-1], WIDTH)
        self.decoder = nn.ModuleList(conv_bn_relu(WIDTH, WIDTH) for _ in range(LEVELS - 2))
        self.classifier = nn.Conv2d(WIDTH, mask_channels(num_classes), 3, padding=1)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        feats = self.encoder(x)
        stem = F.max_pool2d(feats[0], kernel_size=3, stride=2, padding=1)  # the ResNet's own
        below = [stem, *(conv(f) for conv, f in zip(self.reduce, feats[1:], strict=True))]
        enhanced: list[list[torch.Tensor]] = [[] for _ in range(LEVELS - 1)]
        for order, units in enumerate(self.units, start=1):
            shallower, deeper = below[:-1], below[1:]
            if order == LEVELS - 1:
                deeper = [self.apex(deeper[0])]
            below = [unit(self.difference(a, b))
                     for unit, a, b in zip(units, deeper, shallower, strict=True)]
            for level, feature in enumerate(below):
                enhanced[level].append(feature)
        levels = [fuse(reduce(operator.add, parts))
                  for fuse, parts in zip(self.fuse, enhanced[:-1], strict=True)]
        levels.append(enhanced[-1][0])
        out = self.deep(feats[-1])
        for level in range(LEVELS - 2, 0, -1):
            out = self.decoder[level - 1](resize_to(out, levels[level]) + levels[level])
        out = self.classifier(resize_to(out, levels[0]) + levels[0])
        return ModelOutput(resize_to(out, x))

