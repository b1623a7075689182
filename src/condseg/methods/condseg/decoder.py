"""Size-aware decoder: three blocks reading adjacent CDFA levels, and the output head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from condseg.models.blocks import CBR, ChannelAttention, SpatialAttention, resize, upsample


class DecoderBlock(nn.Module):
    """Fuse a deeper map with its skip, two residual CBs, a 1×1 CB, then CA and SA."""

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        self.reduce = CBR(2 * dim, dim, 1)
        self.conv1 = CBR(dim, dim, 3, relu=False)
        self.conv2 = CBR(dim, dim, 3, relu=False)
        self.conv3 = CBR(dim, dim, 1, relu=False)
        self.ca = ChannelAttention(dim)
        self.sa = SpatialAttention()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        s1 = self.reduce(torch.cat([resize(x, skip.shape[-2:]), skip], dim=1))
        s2 = F.relu(self.conv1(s1) + s1)
        s3 = F.relu(self.conv2(s2) + s2 + s1)
        return self.sa(self.ca(F.relu(self.conv3(s3) + s3 + s2 + s1)))


class SizeAwareDecoder(nn.Module):
    """small(f2, f1), middle(f3, f2), large(f4, f3); ``size_aware=False`` keeps only small."""

    def __init__(self, dim: int = 128, size_aware: bool = True) -> None:
        super().__init__()
        self.small = DecoderBlock(dim)
        self.size_aware = size_aware
        if size_aware:
            self.middle = DecoderBlock(dim)
            self.large = DecoderBlock(dim)

    def forward(self, f: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = [self.small(f[1], f[0])]
        if self.size_aware:
            outputs += [self.middle(f[2], f[1]), self.large(f[3], f[2])]
        return outputs


class OutputHead(nn.Module):
    """Concatenate the decoder outputs at the finest size, fuse, upsample to the input, classify."""

    def __init__(self, dim: int = 128, inputs: int = 3, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.fuse = CBR(inputs * dim, dim, 3)
        self.conv1 = CBR(dim, dim, 3)
        self.conv2 = CBR(dim, dim // 2, 1)
        self.classifier = nn.Conv2d(dim // 2, 1, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        size = maps[0].shape[-2:]
        x = self.fuse(torch.cat([resize(m, size) for m in maps], dim=1))
        return self.classifier(self.conv2(self.conv1(upsample(x, self.factor))))
