"""The loss contract and registry: a stage names its loss (``loss.name``) with options.

A loss is an ``nn.Module`` (so it can hold frozen networks and move with the model) called with
the model's outputs per view — ``"image"`` always, plus the extra views it lists in ``views``
(the engine runs the model once per view) — and the target mask (B, 1, H, W). It returns
``loss`` with its graph and detached parts to log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from condseg.models.base import ModelOutput
from condseg.registry import Registry


def _load_packaged() -> None:
    import condseg.losses.mask
    import condseg.losses.structure  # noqa: F401
    from condseg.models import load_families

    load_families()  # family losses


LOSSES: Registry[type[Loss]] = Registry("loss", load=_load_packaged)


class Loss(nn.Module):
    """Base class of registered losses."""

    #: Extra views (besides "image") whose model outputs this loss needs.
    views: tuple[str, ...] = ()

    def forward(
        self, outputs: Mapping[str, ModelOutput], target: Tensor
    ) -> dict[str, Tensor]:  # pragma: no cover - the contract
        raise NotImplementedError


def register_loss(name: str, description: str = ""):
    """Decorator registering a :class:`Loss` subclass under ``name``."""
    return LOSSES.register(name, description)


def create_loss(name: str, **options: Any) -> Loss:
    from condseg.config import ConfigError

    cls = LOSSES.get(name)
    try:
        return cls(**options)
    except TypeError as error:
        raise ConfigError(f"bad option for loss {name!r}: {error}") from error
