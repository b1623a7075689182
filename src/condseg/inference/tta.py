"""Test-time augmentation: the model on flipped (and optionally rotated) copies of the input,
each output mapped back, the probabilities averaged — nnU-Net's mirroring for 2-D images.

A wrapper model, so that prediction, evaluation and sliding windows use it through the one
``probabilities`` path like any model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from condseg.models.base import ModelOutput, SegmentationModel, WrappedModel
from condseg.models.ensemble import mean_probability_logits

#: (quarter turns, flipped axes) of each view. Flips: the four mirrorings of both image axes.
FLIPS: tuple[tuple[int, tuple[int, ...]], ...] = ((0, ()), (0, (-1,)), (0, (-2,)), (0, (-2, -1)))
#: The eight symmetries of the square (rotations by 0/90/180/270°, each also mirrored).
DIHEDRAL: tuple[tuple[int, tuple[int, ...]], ...] = tuple(
    (k, axes) for k in range(4) for axes in ((), (-1,))
)


def _apply(x: Tensor, turns: int, axes: tuple[int, ...]) -> Tensor:
    x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
    return torch.flip(x, axes) if axes else x


def _invert(y: Tensor, turns: int, axes: tuple[int, ...]) -> Tensor:
    y = torch.flip(y, axes) if axes else y
    return torch.rot90(y, -turns, dims=(-2, -1)) if turns else y


class TTA(WrappedModel):
    """``model`` averaged over :data:`FLIPS`, or over :data:`DIHEDRAL` with ``rotations``
    (a 90° turn swaps height and width, which must then suit the model as well)."""

    def __init__(self, model: SegmentationModel, rotations: bool = False) -> None:
        super().__init__(model)
        self.views = DIHEDRAL if rotations else FLIPS

    def forward(self, x: Tensor) -> ModelOutput:
        outputs = [self.model(_apply(x, turns, axes)) for turns, axes in self.views]
        keys = ("mask", *self.map_names)
        logits = {key: [_invert(out.mask if key == "mask" else out.aux[key], turns, axes)
                        for out, (turns, axes) in zip(outputs, self.views, strict=True)]
                  for key in keys}
        merged = {key: mean_probability_logits(values) for key, values in logits.items()}
        return ModelOutput(merged.pop("mask"), merged)
