"""Per-batch hooks a stage can name (``batch_hook``): changes to a collated training batch
before the forward pass, such as the multi-scale training of M2SNet and CHNet."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from condseg.config import RunConfig
from condseg.errors import ConfigError
from condseg.registry import Registry


class BatchHook:
    """Base of registered hooks: ``hook(batch) -> batch``. ``sizes`` are the square input sizes
    it can produce, checked against the model's input rule before training starts."""

    sizes: Sequence[int] = ()

    def resolved(self, size: int, divisor: int) -> BatchHook:
        """The hook for a run at ``data.size`` = ``size`` on a model whose inputs are multiples
        of ``divisor``: what it draws follows the run's size unless the user fixed it."""
        return self

    def record(self) -> dict[str, Any] | None:
        """The options as trained, when they differ from those configured (written to the
        stage's ``result.json`` and model file); None: as configured."""
        return None

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError


BATCH_HOOKS: Registry[Callable[..., BatchHook]] = Registry("batch hook")


#: The authors' sizes 224, 256, ..., 352 as fractions of their 352-pixel input (7/11 .. 1).
AUTHORS_SCALES = tuple(s / 352 for s in (224, 256, 288, 320, 352))


@BATCH_HOOKS.register("multiscale", description="each batch resized to one size drawn from "
                      "`sizes`, by default the authors' 0.64-1.0 x data.size")
class MultiScale(BatchHook):
    """Resize every image tensor of a batch (the image and its views: bilinear) and the mask
    (bilinear, then threshold 0.5, so it stays binary; class ids by nearest) to one size drawn
    per batch from ``sizes`` with torch's generator (seeded runs repeat their sizes).

    Without ``sizes``, they follow the run: ``scales`` (default the authors' 224..352 of 352)
    times ``data.size``, each rounded to the model's input divisor within the scaled range, so
    that no setting of the user's is overridden by the recipe's pixel sizes."""

    def __init__(self, sizes: Sequence[int] | None = None,
                 scales: Sequence[float] | None = None) -> None:
        if sizes is not None and scales is not None:
            raise ConfigError("multiscale takes sizes (pixels) or scales (fractions of "
                              f"data.size), not both; got sizes={sizes!r}, scales={scales!r}")
        if sizes is not None and (not sizes or any(int(s) <= 0 for s in sizes)):
            raise ConfigError(f"multiscale needs a list of positive sizes, got {sizes!r}")
        if scales is not None and (not scales or any(float(s) <= 0 for s in scales)):
            raise ConfigError(f"multiscale needs a list of positive scales, got {scales!r}")
        self.sizes = [int(s) for s in sizes] if sizes is not None else []
        self.scales = [float(s) for s in scales] if scales is not None else list(AUTHORS_SCALES)

    def resolved(self, size: int, divisor: int) -> MultiScale:
        if self.sizes:
            return self
        # 1e-9: 224/352 * 352 / 32 is 7.000000000000001 in floating point, and must give 224
        low = math.ceil(min(self.scales) * size / divisor - 1e-9) * divisor
        high = math.floor(max(self.scales) * size / divisor + 1e-9) * divisor
        if low > high:
            raise ConfigError(
                f"multiscale: no multiple of the model's input divisor {divisor} lies between "
                f"{min(self.scales):g} and {max(self.scales):g} x data.size {size}; set "
                "its batch_hook.options.sizes explicitly or widen batch_hook.options.scales")
        near = (round(s * size / divisor) * divisor for s in self.scales)
        return MultiScale(sizes=sorted({min(max(s, low), high) for s in near}))

    def record(self) -> dict[str, Any]:
        return {"sizes": list(self.sizes)}

    def __str__(self) -> str:
        return f"multi-scale batches of {', '.join(map(str, self.sizes))} px"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        size = self.sizes[int(torch.randint(len(self.sizes), ()).item())]
        out = dict(batch)
        for key, value in batch.items():
            if not isinstance(value, torch.Tensor) or value.ndim != 4 or (
                    value.shape[-2:] == (size, size)):
                continue
            if key == "mask" and not value.is_floating_point():  # class ids: never averaged
                out[key] = F.interpolate(value.float(), size=(size, size),
                                         mode="nearest-exact").to(value.dtype)
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


def as_trained(config: RunConfig, stage: str, hook: BatchHook | None) -> RunConfig:
    """``config`` with the options of ``stage``'s batch hook as trained (for the model file's
    header; the run's config.yaml keeps what was asked)."""
    cfg = config.stages[stage]
    if hook is None or cfg.batch_hook is None or hook.record() is None:
        return config
    cfg = cfg.model_copy(update={
        "batch_hook": cfg.batch_hook.model_copy(update={"options": hook.record()})})
    return config.model_copy(update={"stages": {**config.stages, stage: cfg}})
