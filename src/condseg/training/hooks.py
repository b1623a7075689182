"""Per-batch hooks a stage can name (``batch_hook``): changes to a collated training batch
before the forward pass, such as the multi-scale training of M2SNet and CHNet."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from condseg.config import ConfigError
from condseg.registry import Registry


class BatchHook:
    """Base of registered hooks: ``hook(batch) -> batch``. ``sizes`` are the square input sizes
    it can produce, checked against the model's input rule before training starts."""

    sizes: Sequence[int] = ()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError


BATCH_HOOKS: Registry[Callable[..., BatchHook]] = Registry("batch hook")


@BATCH_HOOKS.register("multiscale", "each batch resized to one size drawn from `sizes`")
class MultiScale(BatchHook):
    """Resize every image tensor of a batch (the image and its views: bilinear) and the mask
    (bilinear, then threshold 0.5, so it stays binary) to one size drawn per batch from
    ``sizes`` with torch's generator (seeded runs repeat their sizes)."""

    def __init__(self, sizes: Sequence[int]) -> None:
        if not sizes or any(int(s) <= 0 for s in sizes):
            raise ConfigError(f"multiscale needs a list of positive sizes, got {sizes!r}")
        self.sizes = [int(s) for s in sizes]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        size = self.sizes[int(torch.randint(len(self.sizes), ()).item())]
        out = dict(batch)
        for key, value in batch.items():
            if not isinstance(value, torch.Tensor) or value.ndim != 4 or (
                    value.shape[-2:] == (size, size)):
                continue
            resized = F.interpolate(value.float(), size=(size, size), mode="bilinear",
                                    align_corners=False)
            out[key] = (resized >= 0.5).to(value.dtype) if key == "mask" else resized
        return out


def create_batch_hook(name: str, **options: Any) -> BatchHook:
    try:
        return BATCH_HOOKS.get(name)(**options)
    except TypeError as error:
        raise ConfigError(f"bad option for batch hook {name!r}: {error}") from error
