"""Sliding-window inference: an image larger than the network's input is covered by
overlapping windows of the input size at its own resolution, instead of being shrunk to it.

MONAI's ``sliding_window_inference`` tiles, pads and blends (Gaussian weights, as nnU-Net). It
blends linearly, so the windows give it probabilities, not logits: a one-channel map travels as
the pair (σ(z), σ(−z)) and the blended pair (P, Q) becomes the logit log P − log Q, whose
sigmoid is the blended probability exactly (P + Q = 1); K class maps travel as their softmax
and the blended probabilities P become the logits log P, whose softmax is P (ΣP = 1) — the
model contract's logits, with no clamping.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference
from torch import Tensor

from condseg.models.base import ModelOutput, SegmentationModel, WrappedModel


class SlidingWindow(WrappedModel):
    """``model`` run on windows of ``window`` (H, W) overlapping by ``overlap`` (a fraction of
    the window); an input of exactly the window's size is passed straight through."""

    def __init__(
        self,
        model: SegmentationModel,
        window: Sequence[int],
        overlap: float = 0.25,
        batch_size: int = 4,
    ) -> None:
        super().__init__(model)
        self.window = (int(window[0]), int(window[1]))
        self.overlap = overlap
        self.batch_size = batch_size

    def forward(self, x: Tensor) -> ModelOutput:
        if tuple(x.shape[-2:]) == self.window:
            out = self.model(x)
            return ModelOutput(out.mask, {key: out.aux[key] for key in self.map_names})
        blended = sliding_window_inference(
            x, self.window, self.batch_size, self._pairs, overlap=self.overlap, mode="gaussian",
        )
        k = self.num_classes if self.num_classes > 1 else 0  # the class channels come first
        p, q = blended[:, k:].float().chunk(2, dim=1)
        logits = list((torch.log(p) - torch.log(q)).split(1, dim=1))
        mask = torch.log(blended[:, :k].float()) if k else logits.pop(0)
        return ModelOutput(mask, dict(zip(self.map_names, logits, strict=True)))

    def _pairs(self, window: Tensor) -> Tensor:
        """(B, C, h, w): the softmax of K class maps, then σ(z) of each one-channel map (a
        binary mask, the maps), then σ(−z) of the same."""
        out = self.model(window)
        single = [out.aux[key].float() for key in self.map_names]
        classes = []
        if self.num_classes == 1:
            single.insert(0, out.mask.float())
        else:
            classes.append(torch.softmax(out.mask.float(), 1))
        return torch.cat([*classes, *map(torch.sigmoid, single),
                          *(torch.sigmoid(-z) for z in single)], dim=1)
