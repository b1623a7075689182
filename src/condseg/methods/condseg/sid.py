"""Semantic Information Decoupling: foreground / background / uncertainty branches, their
auxiliary mask heads, and the guidance maps that carry f_fg and f_bg to every CDFA level."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from condseg.errors import ModelError
from condseg.models.blocks import CBR, Upsample


class SID(nn.Module):
    """Three parallel CBR stacks on the deepest encoder map: f_fg, f_bg, f_uc."""

    BRANCHES = ("fg", "bg", "uc")

    def __init__(self, cin: int, mid: int, dim: int = 128) -> None:
        super().__init__()
        for branch in self.BRANCHES:
            self.add_module(
                branch, nn.Sequential(CBR(cin, mid, 3), CBR(mid, dim, 3), CBR(dim, dim, 1))
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.fg(x), self.bg(x), self.uc(x)


def aux_head(dim: int, stride: int, width: int) -> nn.Sequential:
    """Mask head for one SID branch: CBR / ×2 upsampling steps back to the input resolution.

    The channel plans are the authors' (stride 16: 256, 256, 128, 64, 64; stride 32: 128, 128,
    128, 64, 64, 32), scaled by ``width / 128`` for narrow models.
    """
    plans = {16: (256, 256, 128, 64, 64), 32: (128, 128, 128, 64, 64, 32)}
    if stride not in plans:
        raise ModelError(f"the SID head supports encoders of stride 16 or 32, not {stride}")
    channels = [max(c * width // 128, 1) for c in plans[stride]]
    layers: list[nn.Module] = [CBR(dim, channels[0], 3)]
    for cin, cout in itertools.pairwise(channels):
        layers += [Upsample(2), CBR(cin, cout, 3)]
    layers.append(nn.Conv2d(channels[-1], 1, 1))
    return nn.Sequential(*layers)


def guidance(dim: int, scale: int) -> nn.Sequential:
    """CBR, then log2(scale) × [×2 upsampling, CBR]: f_fg or f_bg at one CDFA level's size."""
    layers: list[nn.Module] = [CBR(dim, dim, 3)]
    for _ in range(int(math.log2(scale))):
        layers += [Upsample(2), CBR(dim, dim, 3)]
    return nn.Sequential(*layers)
