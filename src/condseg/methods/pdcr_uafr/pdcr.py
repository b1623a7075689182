"""PDCR, patch-dragsaw contrastive regularisation (Liu et al., §III): the model's side.

During training the plug-in samples N feature vectors on a grid from each chosen site and ties
each to its patches in the input image — the hierarchical series of H-PDCR (P squares of 5, 7
and 9 pixels centred where the vector lies) or, for RF-PDCR, its receptive field (Eqs. 5–7).
It hands them to the loss as training-only auxiliary outputs, one group per term of Eq. 12:

* ``pdcr/<term>/a``, ``pdcr/<term>/b``: the vectors (B, N_a, C) and (B, N_b, C) whose pairs
  the term contrasts;
* ``pdcr/<term>/boxes_a``, ``pdcr/<term>/boxes_b``: their patches (N, P, 4) as pixel boxes
  (y0, x0, y1, x1), ends exclusive, clipped to the image.

A single-layer term is named after its site and contrasts the site's vectors with themselves; a
cross-layer term ``<site>~<site>`` contrasts two sites' vectors, each first projected to 32
channels by its own 1×1 convolution (§III-C). The loss (``ce-pdcr``) does the rest. In eval mode
the plug-in does nothing, so it is absent from evaluation, prediction and the exported graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from condseg.errors import PluginError
from condseg.models.base import ModelOutput, PluginSite, SegmentationModel
from condseg.models.plugins import Plugin, pick_sites, register_plugin

#: §V-A: N per layer, in the order of the host's sites (encoder stages, then decoder blocks).
PAPER_SAMPLES = (128, 64, 32, 8, 8, 8, 8, 8)
#: Module names of residual shortcuts, which the receptive field's main path leaves out.
_SHORTCUTS = ("downsample", "shortcut")


class Term(NamedTuple):
    """One term of Eq. 12: the vectors whose pairs it contrasts and their patches."""

    name: str
    a: Tensor
    b: Tensor
    boxes_a: Tensor
    boxes_b: Tensor


def term_outputs(term: Term) -> dict[str, Tensor]:
    return {f"pdcr/{term.name}/{part}": getattr(term, part)
            for part in ("a", "b", "boxes_a", "boxes_b")}


def terms_of(aux: Mapping[str, Tensor]) -> list[Term]:
    """The PDCR terms in a model's auxiliary outputs (none in eval mode)."""
    names = [key[len("pdcr/"):-len("/a")] for key in aux
             if key.startswith("pdcr/") and key.endswith("/a")]
    return [Term(name, *(aux[f"pdcr/{name}/{part}"] for part in ("a", "b", "boxes_a", "boxes_b")))
            for name in names]


def grid_shape(samples: int) -> tuple[int, int]:
    """Rows × columns of the sampling grid: the largest divisor of N not above √N rows."""
    rows = max(d for d in range(1, math.isqrt(samples) + 1) if samples % d == 0)
    return rows, samples // rows


def grid_indices(length: int, count: int, device: torch.device) -> Tensor:
    """``count`` evenly spread indices into ``length`` positions (cell centres, rounded down;
    they repeat when the feature map is smaller than the grid)."""
    return ((torch.arange(count, device=device) + 0.5) * length / count).floor().long()


def hierarchical_boxes(
    index: Tensor, feature: int, image: int, sizes: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """Starts and ends (each (n, P)) of the patches of side ``sizes`` centred on the pixel
    under each feature ``index``: floor((index + 0.5) · image / feature)."""
    centre = ((index + 0.5) * image / feature).floor().long()[:, None]
    half = torch.tensor([s // 2 for s in sizes], device=index.device)
    return centre - half, centre + half + 1


def chain_field(chain: Sequence[tuple[int, int, int, int]]) -> tuple[int, int, int]:
    """(jump S, offset, side r) of a stack of (kernel, stride, padding, dilation) layers:
    index i sees the pixels [i·S − offset, i·S − offset + r) (Eqs. 5–7)."""
    jump, offset, side = 1, 0, 1
    for kernel, stride, padding, dilation in chain:
        side += dilation * (kernel - 1) * jump
        offset += padding * jump
        jump *= stride
    return jump, offset, side


def layer_chain(model: nn.Module, path: str) -> list[tuple[int, int, int, int]]:
    """The convolutions and poolings from the input up to the end of submodule ``path``, in
    module order, residual shortcuts left out: the main path of a ResNet-like encoder."""
    chain, inside_seen = [], False
    for name, module in model.named_modules():
        inside = name == path or name.startswith(path + ".")
        if inside_seen and not inside:
            break
        inside_seen |= inside
        if any(part in _SHORTCUTS for part in name.split(".")):
            continue
        if isinstance(module, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
            padding = getattr(module, "padding", 0)
            if isinstance(padding, str):
                raise PluginError(f"RF-PDCR cannot follow the receptive field through {name} "
                                 f"(padding {padding!r}); use the hierarchical patches there")
            dilation = getattr(module, "dilation", 1)
            chain.append((_pair(module.kernel_size)[0], _pair(module.stride)[0],
                          _pair(padding)[0], _pair(dilation)[0]))
    return chain


@register_plugin("pdcr",
                 description="patch-dragsaw contrastive regularisation (training-only features)")
class PDCRPlugin(Plugin):
    """H-PDCR on single ``layers`` and ``cross`` pairs of sites, RF-PDCR on the single-layer
    terms of the sites in ``receptive_field`` (encoder stages only).

    Defaults (the paper's best, Table VI–VII): single-layer on encoder stages 2–4 and every
    decoder block, cross-layer between encoder stages 2 and 3. ``samples`` maps a site to its N
    (default :data:`PAPER_SAMPLES` by the site's position); ``patches`` are the sides of the
    hierarchical series; ``projection`` the width of the cross-layer 1×1 convolutions.
    """

    order = 1

    def __init__(
        self,
        model: SegmentationModel,
        sites: Mapping[str, PluginSite],
        layers: Sequence[str] | None = None,
        cross: Sequence[Sequence[str]] = (("encoder2", "encoder3"),),
        receptive_field: Sequence[str] = (),
        samples: Mapping[str, int] | None = None,
        patches: Sequence[int] = (5, 7, 9),
        projection: int = 32,
    ) -> None:
        super().__init__(model, sites)
        if layers is None:
            layers = ["encoder2", "encoder3", "encoder4",
                      *(name for name in sites if name.startswith("decoder"))]
        pairs = [tuple(pair) for pair in cross]
        if any(len(pair) != 2 or pair[0] == pair[1] for pair in pairs):
            raise PluginError(f"pdcr cross must list pairs of two different sites, got {cross!r}")
        if not layers and not pairs:
            raise PluginError("pdcr needs at least one site in layers or one pair in cross")
        if not patches or any(int(p) < 1 or int(p) % 2 == 0 for p in patches):
            raise PluginError(f"pdcr patches must be odd sides >= 1, got {patches!r}")
        self.layers, self.pairs = list(layers), pairs
        self.patches = [int(p) for p in patches]
        used = pick_sites(sites, {*self.layers, *(s for pair in pairs for s in pair)}, "pdcr")
        order = list(sites)
        samples = dict(samples or {})
        self.samples = {name: int(samples.pop(name, PAPER_SAMPLES[min(order.index(name),
                                                                      len(PAPER_SAMPLES) - 1)]))
                        for name in used}
        if samples or min(self.samples.values()) < 1:
            raise PluginError(f"pdcr samples: give N >= 1 for sites in use ({', '.join(used)}), "
                             f"got {samples or self.samples}")
        self.fields = {}
        for name in receptive_field:
            if name not in self.layers or not name.startswith("encoder"):
                raise PluginError(f"pdcr receptive_field names {name!r}: RF-PDCR applies to the "
                                 "single-layer term of an encoder site listed in layers")
            self.fields[name] = chain_field(layer_chain(model, sites[name].path))
        crossed = sorted({s for pair in pairs for s in pair}, key=order.index)
        self.project = nn.ModuleDict(
            {name: nn.Conv2d(sites[name].channels, projection, 1) for name in crossed})
        self._captured: dict[str, tuple[Tensor, tuple[int, int]]] = {}
        for name, site in used.items():
            model.get_submodule(site.path).register_forward_hook(partial(_capture, self, name))
        model.register_forward_pre_hook(partial(_start, self))
        model.register_forward_hook(partial(_finish, self))

    def sample(self, name: str, feature: Tensor) -> Tensor:
        """The grid of N vectors of a site, (B, C, rows, columns)."""
        rows, cols = grid_shape(self.samples[name])
        iy = grid_indices(feature.shape[-2], rows, feature.device)
        ix = grid_indices(feature.shape[-1], cols, feature.device)
        return feature[:, :, iy[:, None], ix[None, :]]

    def boxes(
        self, name: str, shape: tuple[int, int], image: tuple[int, int], rf: bool,
        device: torch.device,
    ) -> Tensor:
        """(N, P, 4) pixel boxes of the sampled vectors of a site whose output is ``shape``."""
        rows, cols = grid_shape(self.samples[name])
        spans = []
        for axis, count in enumerate((rows, cols)):
            index = grid_indices(shape[axis], count, device)
            if rf:
                jump, offset, side = self.fields[name]
                start = (index * jump - offset)[:, None]
                spans.append((start, start + side))
            else:
                spans.append(hierarchical_boxes(index, shape[axis], image[axis], self.patches))
        (y0, y1), (x0, x1) = spans
        p = y0.shape[1]
        boxes = torch.stack([
            y0[:, None].expand(rows, cols, p).clamp(0, image[0]),
            x0[None].expand(rows, cols, p).clamp(0, image[1]),
            y1[:, None].expand(rows, cols, p).clamp(0, image[0]),
            x1[None].expand(rows, cols, p).clamp(0, image[1]),
        ], dim=-1)
        return boxes.reshape(rows * cols, p, 4)

    def terms(self, image: tuple[int, int]) -> list[Term]:
        def vectors(grid: Tensor) -> Tensor:
            return grid.flatten(2).transpose(1, 2)

        out = []
        for name in self.layers:
            grid, shape = self._captured[name]
            boxes = self.boxes(name, shape, image, name in self.fields, grid.device)
            out.append(Term(name, vectors(grid), vectors(grid), boxes, boxes))
        for a, b in self.pairs:
            (grid_a, shape_a), (grid_b, shape_b) = self._captured[a], self._captured[b]
            out.append(Term(f"{a}~{b}", vectors(self.project[a](grid_a)),
                            vectors(self.project[b](grid_b)),
                            self.boxes(a, shape_a, image, False, grid_a.device),
                            self.boxes(b, shape_b, image, False, grid_b.device)))
        return out


def _capture(plugin: PDCRPlugin, name: str, module: nn.Module, args: Any, output: Tensor) -> None:
    if plugin.training:
        plugin._captured[name] = (plugin.sample(name, output), tuple(output.shape[-2:]))


def _start(plugin: PDCRPlugin, module: nn.Module, args: Any) -> None:
    plugin._captured.clear()


def _finish(plugin: PDCRPlugin, module: nn.Module, args: Any, output: ModelOutput) -> Any:
    """Adds the terms to the host's auxiliary outputs (training only)."""
    if not plugin.training:
        return None
    image = tuple(args[0].shape[-2:])
    aux = dict(output.aux)
    for term in plugin.terms(image):
        aux.update(term_outputs(term))
    plugin._captured.clear()
    return ModelOutput(output.mask, aux)
