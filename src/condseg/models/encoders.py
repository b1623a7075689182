"""Encoders: timm feature extractors returning the first feature levels (four by default).

ImageNet weights come through timm when online, or from a local file (``weights=PATH``); when
neither is possible the error says which option to use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import timm
from torch import nn

from condseg.errors import ModelError, WeightsUnavailableError
from condseg.filekind import refuse_special
from condseg.models.base import PluginSite
from condseg.models.pretrained import host_reachable

#: The pretrained tag used for each encoder name when ImageNet weights are asked for.
DEFAULT_TAGS = {"resnet50": "resnet50.tv_in1k", "pvt_v2_b2": "pvt_v2_b2.in1k"}

T = TypeVar("T")


def create_encoder(
    name: str = "resnet50",
    pretrained: bool = False,
    weights: str | Path | None = None,
    levels: int = 4,
) -> nn.Module:
    """A timm ``features_only`` model returning its first ``levels`` feature levels.

    With four levels, for ResNets these are the stem and stages 1–3 (strides 2–16; stage 4 is
    never built), for PVT-v2 the four stages (strides 4–32); five levels add a ResNet's stage 4
    (stride 32). ``weights`` is a local file (safetensors or a torch state dict, in timm's or
    the original repository's key names) and implies ``pretrained``.
    """
    try:
        return with_imagenet_weights(timm.create_model, name, pretrained, weights,
                                     features_only=True, out_indices=tuple(range(levels)))
    except IndexError as error:  # timm's answer to an out_indices beyond the model's levels
        raise ModelError(f"encoder {name!r} has fewer than the {levels} feature levels this "
                         "model needs; choose another encoder") from error


def with_imagenet_weights(
    factory: Callable[..., T],
    name: str,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> T:
    """``factory(tag, pretrained=..., **kwargs)``, where ``factory`` ends in
    ``timm.create_model`` (timm itself, or a library passing keyword arguments on to it), so
    that every encoder gets its ImageNet weights the same way: the default tag of ``name``
    (:data:`DEFAULT_TAGS`), a local ``weights`` file through timm's ``pretrained_cfg_overlay``,
    and one clear error naming the options when neither a download nor the file works.
    """
    if weights is not None:
        path = Path(weights)
        refuse_special(path, "encoder weights file", WeightsUnavailableError,
                       "pass the file itself, or drop model.weights to use timm's download")
        if not path.is_file():
            raise WeightsUnavailableError(
                f"encoder weights file not found: {path}. Pass an existing file, or drop "
                "model.weights to use timm's download."
            )
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    tag = DEFAULT_TAGS.get(name, name) if pretrained else name
    if not pretrained:
        return factory(tag, pretrained=False, **kwargs)
    try:
        with _cache_only_when_offline():
            return factory(tag, pretrained=True, **kwargs)
    except Exception as error:  # timm/hub raise many kinds when offline or on a bad file
        raise WeightsUnavailableError(
            f"could not load ImageNet weights for encoder '{tag}' ({type(error).__name__}: "
            f"{error}). Where there is no network, download them elsewhere and pass the file "
            "with model.weights=PATH, or train from scratch with model.pretrained=false.",
            what=f"ImageNet weights of encoder '{tag}'", without="model.pretrained=false",
        ) from error


@contextmanager
def _cache_only_when_offline(timeout: float = 3.0) -> Iterator[None]:
    """When the weights hub cannot be reached, look in the local cache only: the hub client
    would otherwise retry for about a minute before failing."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or not host_reachable(constants.ENDPOINT, timeout)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def encoder_channels(encoder: nn.Module) -> list[int]:
    """Channels of the feature levels of a timm ``features_only`` model."""
    return list(encoder.feature_info.channels())


def encoder_reductions(encoder: nn.Module) -> list[int]:
    """Strides of the feature levels (2, 4, 8, 16 for ResNet-50's first four; 4..32 for PVT-v2)."""
    return list(encoder.feature_info.reduction())


def encoder_sites(encoder: nn.Module, prefix: str) -> dict[str, PluginSite]:
    """``encoder1``, ``encoder2``, ... : the modules whose outputs a timm ``features_only``
    model returns, as plug-in sites under ``prefix`` (timm flattens their dotted names)."""
    info = encoder.feature_info
    return {
        f"encoder{i}": PluginSite(f"{prefix}.{name.replace('.', '_')}", channels)
        for i, (name, channels) in enumerate(
            zip(info.module_name(), info.channels(), strict=True), start=1)
    }
