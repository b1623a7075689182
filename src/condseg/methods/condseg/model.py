"""ConDSeg (Lei et al., AAAI 2025): encoder → FEM → SID → CDFA chain → size-aware decoder."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from condseg.errors import ModelError
from condseg.methods.condseg.cdfa import CDFA, CDFAMode
from condseg.methods.condseg.decoder import OutputHead, SizeAwareDecoder
from condseg.methods.condseg.sid import SID, aux_head, guidance
from condseg.models.base import ModelOutput, PluginSite, SegmentationModel, refuse_classes
from condseg.models.blocks import FEM, resize
from condseg.models.encoders import (
    create_encoder,
    encoder_channels,
    encoder_reductions,
    encoder_sites,
)
from condseg.models.recompute import checkpointed
from condseg.models.registry import register_model

#: Paper Table 4: ``baseline`` has no SID/guidance/attention and only the small decoder;
#: ``sid_cdfa`` is the full model with only the small decoder; ``full`` is ConDSeg.
Variant = Literal["full", "sid_cdfa", "baseline"]
#: Why ConDSeg (and its stage-1 network) takes no classes: SID's three branches and the
#: consistency losses are defined for one foreground against its background.
BINARY_BY_DESIGN = "SID decouples foreground from background"


@register_model("condseg", description="ConDSeg, ResNet-50 encoder (paper)",
                defaults={"encoder": "resnet50"})
@register_model("condseg-pvt", description="ConDSeg, PVT-v2-b2 encoder",
                defaults={"encoder": "pvt_v2_b2"})
class ConDSeg(SegmentationModel):
    """ConDSeg on a timm encoder; takes a normalised (B, 3, H, W) tensor (H, W multiples of
    ``input_divisor``) and returns the mask logits and, unless ``variant="baseline"``, the SID
    logit maps ``fg``, ``bg``, ``uc`` (all at the input size).

    In training each stage recomputes its activations in backward unless ``plain_kernels``
    (:func:`condseg.models.base.use_plain_kernels`) is set."""

    plain_kernels: bool = False

    def __init__(
        self,
        encoder: str = "resnet50",
        pretrained: bool = False,
        weights: str | Path | None = None,
        width: int = 128,
        cdfa_mode: CDFAMode = "official",
        variant: Variant = "full",
        heads: int = 4,
        kernel: int = 3,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        refuse_classes("ConDSeg", num_classes, BINARY_BY_DESIGN)
        if variant not in ("full", "sid_cdfa", "baseline"):
            raise ModelError(f"variant must be 'full', 'sid_cdfa' or 'baseline', got {variant!r}")
        self.encoder = create_encoder(encoder, pretrained, weights)
        channels, strides = encoder_channels(self.encoder), encoder_reductions(self.encoder)
        self.input_divisor = strides[-1]
        self.decoupled = variant != "baseline"
        self.map_names = SID.BRANCHES if self.decoupled else ()
        self.fems = nn.ModuleList(FEM(c, width) for c in channels)
        if self.decoupled:
            self.sid = SID(channels[-1], channels[-1] // 2 * width // 128, width)
            self.aux_heads = nn.ModuleDict(
                {b: aux_head(width, strides[-1], width) for b in SID.BRANCHES}
            )
            scales = [strides[-1] // s for s in strides]
            self.guides_fg = nn.ModuleList(guidance(width, s) for s in scales)
            self.guides_bg = nn.ModuleList(guidance(width, s) for s in scales)
        self.cdfas = nn.ModuleList(
            CDFA(width if level == 3 else 2 * width, width, heads, kernel, cdfa_mode,
                 guided=self.decoupled)
            for level in range(4)
        )
        size_aware = variant == "full"
        self.decoder = SizeAwareDecoder(width, size_aware)
        self.head = OutputHead(width, inputs=3 if size_aware else 1, factor=strides[0])

    def plugin_sites(self) -> dict[str, PluginSite]:
        """The encoder's four levels only (plug-ins on ConDSeg's encoder, DESIGN §8)."""
        return encoder_sites(self.encoder, "encoder")

    def forward(self, x: torch.Tensor) -> ModelOutput:
        run = checkpointed if self._recompute(x) else _call
        feats = run(self.encoder, x)
        d = [run(fem, f) for fem, f in zip(self.fems, feats, strict=True)]
        g_fg = g_bg = [None] * 4
        sid_logits: dict[str, torch.Tensor] = {}
        if self.decoupled:
            f_fg, f_bg, f_uc = run(self.sid, feats[-1])
            sid_logits = {  # only the maps asked for (an inference copy may want none)
                b: run(self.aux_heads[b], f)
                for b, f in zip(SID.BRANCHES, (f_fg, f_bg, f_uc), strict=True)
                if b in self.map_names
            }
            g_fg = [run(g, f_fg) for g in self.guides_fg]
            g_bg = [run(g, f_bg) for g in self.guides_bg]
        f: list[torch.Tensor] = [None] * 4  # type: ignore[list-item]
        f[3] = run(self.cdfas[3], d[3], g_fg[3], g_bg[3])
        for level in (2, 1, 0):
            cdfa = self.cdfas[level]
            f[level] = run(cdfa, d[level], f[level + 1], g_fg[level], g_bg[level],
                           call=functools.partial(_fuse_and_aggregate, cdfa))
        mask = run(self.head, run(self.decoder, f))
        return ModelOutput(mask, sid_logits)

    def _recompute(self, x: torch.Tensor) -> bool:
        """Recompute activations in backward (:mod:`condseg.models.recompute`) when training on
        the default path on a CPU; the plain path keeps them, as the network is written, and so
        does a GPU, where the rerun costs more time than the memory is worth
        (docs/performance.md)."""
        return (self.training and torch.is_grad_enabled() and not self.plain_kernels
                and x.device.type == "cpu")


def _call(module: nn.Module, *args: Any, call: Callable[..., Any] | None = None) -> Any:
    return (call or module)(*args)


def _fuse_and_aggregate(
    cdfa: CDFA, d: torch.Tensor, deeper: torch.Tensor, g_fg: torch.Tensor | None,
    g_bg: torch.Tensor | None,
) -> torch.Tensor:
    """One CDFA level of the chain: its FEM map beside the deeper level's output, upsampled."""
    return cdfa(torch.cat([d, resize(deeper, d.shape[-2:])], dim=1), g_fg, g_bg)
