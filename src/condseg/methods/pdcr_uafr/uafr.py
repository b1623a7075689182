"""UAFR, uncertainty-aware feature re-weighting (Liu et al., §IV, Eqs. 13–15).

A small head F(·) = Conv3×3 → BN → ReLU → Conv1×1 scores each position of a hidden feature Q
into M classes; the normalised Shannon entropy U ∈ [0, 1] of their softmax measures how unsure
it is, and Q̂ = Q · (1 + (1 − U)) passes on to the rest of the network instead of Q: confident
positions are doubled, the most uncertain ones kept as they are. It needs no supervision and is
part of inference (and of the exported graph). M is the number of classes: 2 for a binary model
(background, foreground), K for a K-class one.

One block works on 2-D (B, C, H, W) or 3-D (B, C, D, H, W) features (``dims``). On a condseg
host the ``uafr`` plug-in puts one after each chosen site by forward hooks; elsewhere (e.g. in
an nnU-Net decoder) use the block directly, on each stage's output before it passes on::

    from condseg.methods.pdcr_uafr.uafr import UAFR

    block = UAFR(channels=128, classes=K, dims=3)  # K: the network's outputs incl. background
    q_hat = block(q)                               # q (B, 128, D, H, W) -> same shape
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from condseg.errors import PluginError
from condseg.methods.pdcr_uafr.pdcr import CONVS
from condseg.models.base import PluginSite, SegmentationModel
from condseg.models.plugins import Plugin, pick_sites, register_plugin


def uncertainty(scores: Tensor) -> Tensor:
    """Eq. 14: the entropy of softmax(scores) over dim 1 divided by log M, (B, 1, h, w).

    ``a · log_softmax`` rather than ``a · log a``: finite wherever a probability underflows to
    0, so a one-hot softmax gives exactly 0."""
    log_p = F.log_softmax(scores.float(), dim=1)
    return -(log_p.exp() * log_p).sum(1, keepdim=True) / math.log(scores.shape[1])


def reweight(q: Tensor, scores: Tensor) -> Tensor:
    """Eq. 15: Q̂ = Q · (1 + (1 − U))."""
    return q * (2 - uncertainty(scores)).to(q.dtype)


_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class UAFR(nn.Module):
    """One UAFR block on a ``dims``-D feature of ``channels`` channels; ``hidden`` is the width
    of the 3×3 (×3) convolution (default M: the paper leaves it open and calls the block
    lightweight)."""

    def __init__(
        self, channels: int, classes: int = 2, hidden: int | None = None, kernel: int = 3,
        dims: int = 2,
    ) -> None:
        super().__init__()
        if classes < 2:
            raise PluginError(f"UAFR needs at least 2 classes (the entropy is normalised by "
                             f"log M), got classes={classes}")
        if dims not in CONVS:
            raise PluginError(f"UAFR works on 1-, 2- or 3-D features, got dims={dims}")
        hidden = hidden or classes
        conv = CONVS[dims]
        self.score = nn.Sequential(
            conv(channels, hidden, kernel, padding=kernel // 2, bias=False),
            _NORMS[dims](hidden),
            nn.ReLU(inplace=True),
            conv(hidden, classes, 1),
        )

    def forward(self, q: Tensor) -> Tensor:
        return reweight(q, self.score(q))


@register_plugin("uafr",
                 description="uncertainty-aware feature re-weighting after each chosen site")
class UAFRPlugin(Plugin):
    """UAFR after each of ``sites`` (default: every encoder stage and decoder block the host
    declares, as the paper's DeepLabV3+ — not the ASPP neck). ``classes`` is M, by default the
    host's: 2 for a binary model, ``num_classes`` for a K-class one."""

    order = 0

    def __init__(
        self,
        model: SegmentationModel,
        sites: Mapping[str, PluginSite],
        layers: Sequence[str] | None = None,
        classes: int | None = None,
        hidden: int | None = None,
        kernel: int = 3,
    ) -> None:
        super().__init__(model, sites)
        if classes is None:
            classes = max(2, getattr(model, "num_classes", 1))
        chosen = pick_sites(sites, sites if layers is None else layers, "uafr")
        self.blocks = nn.ModuleDict(
            {name: UAFR(site.channels, classes, hidden, kernel) for name, site in chosen.items()}
        )
        for name, site in chosen.items():
            model.get_submodule(site.path).register_forward_hook(partial(_apply, self, name))


def _apply(plugin: UAFRPlugin, name: str, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    """The hook of one site (a partial of the plug-in, so a deep copy of the model hooks the
    copy's blocks)."""
    return plugin.blocks[name](output)
