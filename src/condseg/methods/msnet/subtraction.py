"""The subtraction unit of MSNet and the multi-scale one of M2SNet (Zhao et al., M2SNet §3.1),
as the authors' code computes them.

A unit is ``conv_bn_relu(D(A, B))`` where ``A`` (the deeper map) is first resized to ``B``'s
size and ``D`` is :class:`Difference`: ``|A − B|`` for MSNet; M2SNet adds ``|K(A) − K(B)|`` for
fixed all-ones 3×3 and 5×5 filters ``K``, each followed by a trained BatchNorm and ReLU, one
such filter module shared by every unit of the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int = 64) -> nn.Sequential:
    """Conv3×3 (with bias, as the authors' layers) → BatchNorm → ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize to ``like``'s size with ``align_corners=False`` (the authors' choice)."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class BoxFilter(nn.Module):
    """An all-ones ``size``×``size`` convolution from C to C channels (zero bias, "same"
    padding) → BatchNorm → ReLU. The filter is fixed, so it is a buffer kept out of the state
    dict and the model file; every output channel is the sum of all input channels over the
    window.

    The default path sums the channels once and filters that single map (every output channel
    is the same), about C² times fewer operations than the convolution; ``plain_kernels``
    (:func:`condseg.models.base.use_plain_kernels`) runs the C→C all-ones convolution itself.
    """

    def __init__(self, size: int, channels: int = 64) -> None:
        super().__init__()
        self.size, self.channels = size, channels
        self.plain_kernels = False
        self.register_buffer("kernel", torch.ones(1, 1, size, size), persistent=False)
        self.norm = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, pad = self.channels, self.size // 2  # constants, also when traced
        kernel = self.kernel.to(x.dtype)
        if self.plain_kernels:
            summed = F.conv2d(x, kernel.expand(channels, channels, -1, -1), padding=pad)
        else:
            summed = F.conv2d(x.sum(1, keepdim=True), kernel, padding=pad)
            summed = summed.expand(-1, channels, -1, -1)
        return self.relu(self.norm(summed))


class Difference(nn.Module):
    """``D(A, B)``: ``|A − B|`` plus, for each size in ``sizes``, ``|K(A) − K(B)|`` with the
    shared :class:`BoxFilter` ``K`` of that size (applied to each map on its own, so that in
    training its BatchNorm normalises each with that map's statistics, as the authors' code)."""

    def __init__(self, sizes: Sequence[int] = (), channels: int = 64) -> None:
        super().__init__()
        self.filters = nn.ModuleList(BoxFilter(size, channels) for size in sizes)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = resize_to(a, b)
        out = (a - b).abs()
        for box in self.filters:
            out = out + (box(a) - box(b)).abs()
        return out
