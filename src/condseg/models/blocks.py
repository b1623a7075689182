"""Building blocks shared by the networks: conv-BN(-ReLU), channel/spatial attention, FEM.

Conventions follow DESIGN.md §3: convolutions in CBR/CB have no bias, "same" padding
``d·(k−1)/2``, and all resizing is bilinear with ``align_corners=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` (the convention of every ConDSeg layer)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Upsample by an integer factor (bilinear, ``align_corners=True``)."""
    return resize(x, (x.shape[-2] * factor, x.shape[-1] * factor))


class Upsample(nn.Module):
    """Module form of :func:`upsample`, for use inside ``nn.Sequential`` heads."""

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample(x, self.factor)


class CBR(nn.Sequential):
    """Conv(no bias) → BatchNorm → ReLU; with ``relu=False`` it is the "CB" block."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 3, dilation: int = 1, relu: bool = True
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel - 1) // 2,
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ChannelAttention(nn.Module):
    """x · σ(MLP(avgpool x) + MLP(maxpool x)), the MLP being two bias-free 1×1 convs (C→C/16→C)."""

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        hidden = max(channels // ratio, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        mx = self.fc2(F.relu(self.fc1(F.adaptive_max_pool2d(x, 1))))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """x · σ(Conv7×7([mean_c x, max_c x]))."""

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class FEM(nn.Module):
    """Feature enhancement: four (dilated) CBR+CA branches, a fused CB, a 1×1 shortcut, then SA.

    Dilations 1 (1×1 kernel), 6, 12, 18 widen the receptive field of each encoder level before
    the levels are aggregated.
    """

    DILATIONS = (6, 12, 18)

    def __init__(self, cin: int, cout: int = 128) -> None:
        super().__init__()
        specs = [(1, 1)] + [(3, d) for d in self.DILATIONS]
        self.branches = nn.ModuleList(
            nn.Sequential(CBR(cin, cout, k, d), ChannelAttention(cout)) for k, d in specs
        )
        self.fuse = CBR(len(specs) * cout, cout, 3, relu=False)
        self.shortcut = CBR(cin, cout, 1, relu=False)
        self.sa = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))
        return self.sa(F.relu(main + self.shortcut(x)))
