"""Model registry: ``create_model(name, **options)`` and ``list_models()``.

Every created model carries ``model.arch = {"name", "options"}``, enough to rebuild it (model
files store it), and ``model.input_divisor`` (input sizes must be multiples of it).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from condseg.models.condseg.model import ConDSeg, ConDSegOutput
from condseg.models.condseg.net0 import Net0

_MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "condseg": (partial(ConDSeg, encoder="resnet50"), "ConDSeg, ResNet-50 encoder (paper)"),
    "condseg-pvt": (partial(ConDSeg, encoder="pvt_v2_b2"), "ConDSeg, PVT-v2-b2 encoder"),
    "condseg-net0": (partial(Net0, encoder="resnet50"), "Net_0, the stage-1 network of CR"),
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_MODELS)


def describe_models() -> dict[str, str]:
    """One line of description per model name."""
    return {name: desc for name, (_, desc) in sorted(_MODELS.items())}


def create_model(
    name: str, *, pretrained: bool = False, weights: str | Path | None = None, **options
) -> nn.Module:
    """Build a registered model. ``pretrained``/``weights`` concern the ImageNet encoder."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    builder, _ = _MODELS[name]
    try:
        model = builder(pretrained=pretrained, weights=weights, **options)
    except TypeError as error:
        raise ValueError(f"bad option for model {name!r}: {error}") from error
    model.arch = {"name": name, "options": dict(options)}
    return model


def mask_logits(output: torch.Tensor | ConDSegOutput) -> torch.Tensor:
    """The (B, 1, H, W) mask logits of any model's output."""
    return output.mask if isinstance(output, ConDSegOutput) else output
