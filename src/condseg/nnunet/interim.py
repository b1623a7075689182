"""INTERIM (replaced by the dimension-generic plug-ins of methods/pdcr_uafr when they land):
the few n-D pieces the nnU-Net variants need that the 2-D plug-ins do not have yet."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condseg.methods.pdcr_uafr.losses import affinity, dragsaw, similarities
from condseg.methods.pdcr_uafr.uafr import reweight


class UAFR(nn.Module):
    def __init__(self, channels: int, classes: int, dims: int, hidden: int | None = None) -> None:
        super().__init__()
        conv = (nn.Conv2d, nn.Conv3d)[dims - 2]
        norm = (nn.BatchNorm2d, nn.BatchNorm3d)[dims - 2]
        hidden = hidden or classes
        self.score = nn.Sequential(conv(channels, hidden, 3, padding=1, bias=False), norm(hidden),
                                   nn.ReLU(inplace=True), conv(hidden, classes, 1))

    def forward(self, q: Tensor) -> Tensor:
        return reweight(q, self.score(q))


def grid_shape(samples: int, dims: int) -> tuple[int, ...]:
    shape = []
    for left in range(dims, 0, -1):
        side = max(d for d in range(1, math.floor(samples ** (1 / left) + 1e-9) + 1)
                   if samples % d == 0)
        shape.append(side)
        samples //= side
    return tuple(shape)


def grid_indices(length: int, count: int, device: torch.device) -> Tensor:
    return ((torch.arange(count, device=device) + 0.5) * length / count).floor().long()


def sample(feature: Tensor, samples: int) -> Tensor:
    """(B, N, C) vectors on a grid over the spatial dims."""
    dims = feature.ndim - 2
    index = [grid_indices(n, c, feature.device)
             for n, c in zip(feature.shape[2:], grid_shape(samples, dims), strict=True)]
    grid = feature[(slice(None), slice(None), *torch.meshgrid(*index, indexing="ij"))]
    return grid.flatten(2).transpose(1, 2)


def boxes(samples: int, shape: Sequence[int], image: Sequence[int],
          sizes: Sequence[int]) -> Tensor:
    """(N, P, 2·dims) starts then ends (ends exclusive, clipped) of the cubes of side ``sizes``
    centred on the voxel under each sampled vector."""
    dims = len(shape)
    half = torch.tensor([s // 2 for s in sizes])
    starts, ends = [], []
    for n, c, full in zip(shape, grid_shape(samples, dims), image, strict=True):
        centre = ((grid_indices(n, c, torch.device("cpu")) + 0.5) * full / n).floor().long()
        starts.append((centre[:, None] - half).clamp(0, full))
        ends.append((centre[:, None] + half + 1).clamp(0, full))
    mesh = torch.meshgrid(*(torch.arange(len(s)) for s in starts), indexing="ij")
    flat = [m.flatten() for m in mesh]
    return torch.stack([s[f] for s, f in zip(starts, flat, strict=True)]
                       + [e[f] for e, f in zip(ends, flat, strict=True)], -1)


def class_ratios(labels: Tensor, boxes: Tensor, classes: int) -> Tensor:
    """φ (B, N, P, M) of each box in the label map (B, 1, *S) of ids 0..M-1."""
    dims = labels.ndim - 2
    onehot = F.one_hot(labels[:, 0].long().clamp(0, classes - 1), classes).movedim(-1, 1)
    integral = onehot.double()
    for axis in range(dims):
        integral = integral.cumsum(2 + axis)
    integral = F.pad(integral, (1, 0) * dims)
    starts, ends = boxes[..., :dims], boxes[..., dims:]
    total = 0
    for corner in itertools.product((0, 1), repeat=dims):
        pick = torch.where(torch.tensor(corner, dtype=torch.bool), ends, starts)
        sign = (-1) ** (dims - sum(corner))
        total = total + sign * integral[(slice(None), slice(None), *pick.unbind(-1))]
    volume = (ends - starts).prod(-1).clamp(min=1)
    return (total / volume).permute(0, 2, 3, 1).float()


def positions(boxes: Tensor, image: Sequence[int]) -> Tensor:
    dims = len(image)
    full = torch.tensor(image, dtype=torch.float32)
    starts, ends = boxes[..., :dims].float() / full, (boxes[..., dims:].float() - 1) / full
    return torch.stack([starts, ends], -1).flatten(-2)


def term_loss(a: Tensor, b: Tensor, boxes_a: Tensor, boxes_b: Tensor, labels: Tensor,
              classes: int, tau: float = 1.0) -> Tensor:
    image = labels.shape[2:]
    w = affinity(class_ratios(labels, boxes_a, classes), class_ratios(labels, boxes_b, classes))
    s = similarities(a, b, positions(boxes_a, image), positions(boxes_b, image))
    return dragsaw(s, w, tau).mean()
