"""The loss contract and registry: a stage names its loss (``loss.name``) with options.

A loss is an ``nn.Module`` (so it can hold frozen networks and move with the model) called with
the model's outputs per view — ``"image"`` always, plus the extra views it lists in ``views``
(the engine runs the model once per view) — and the target mask (B, 1, H, W): 0/1 float for a
binary model, int64 class ids for one of K >= 2 classes. It returns ``loss`` with its graph
and detached parts to log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from condseg.errors import LossError
from condseg.models.base import ModelOutput
from condseg.registry import Registry

LOSSES: Registry[type[Loss]] = Registry("loss")


class Loss(nn.Module):
    """Base class of registered losses."""

    #: Extra views (besides "image") whose model outputs this loss needs.
    views: tuple[str, ...] = ()
    #: What the loss is with K >= 2 classes, printed in the run header (docs/decisions.md).
    multiclass: str = ""
    #: A loss of one logit map only: refused before training on several classes.
    binary_only: bool = False

    def forward(
        self, outputs: Mapping[str, ModelOutput], target: Tensor
    ) -> dict[str, Tensor]:  # pragma: no cover - the contract
        raise NotImplementedError


def register_loss(name: str, loss: type[Loss] | None = None, *, description: str = "") -> Any:
    """Register a :class:`Loss` subclass under ``name`` (without ``loss``: a decorator that
    does)."""
    return LOSSES.register(name, loss, description=description)


def create_loss(name: str, **options: Any) -> Loss:
    cls = LOSSES.get(name)
    try:
        return cls(**options)
    except TypeError as error:
        raise LossError(f"bad option for loss {name!r}: {error}") from error
