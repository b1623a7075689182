"""PDCR, patch-dragsaw contrastive regularisation (Liu et al., §III): the model's side, one
implementation for 2-D (B, C, H, W) and 3-D (B, C, D, H, W) features.

During training N feature vectors are sampled on a grid from each chosen site and tied to their
patches in the input — the hierarchical series of H-PDCR (P squares, or cubes in 3-D, of 5, 7
and 9 pixels centred where the vector lies) or, for RF-PDCR, its receptive field (Eqs. 5–7,
followed axis by axis). Each term of Eq. 12 is a :class:`Term`:

* ``a``, ``b``: the vectors (B, N_a, C) and (B, N_b, C) whose pairs the term contrasts;
* ``boxes_a``, ``boxes_b``: their patches (N, P, 2·d) as pixel boxes, the d starts then the d
  ends (exclusive), clipped to the image: (y0, x0, y1, x1) in 2-D, (z0, y0, x0, z1, y1, x1)
  in 3-D.

A single-layer term is named after its site and contrasts the site's vectors with themselves; a
cross-layer term ``<site>~<site>`` contrasts two sites' vectors, each first projected to 32
channels by its own 1×1 (×1) convolution (§III-C). The loss
(:func:`condseg.methods.pdcr_uafr.losses.pdcr_loss`) does the rest.

On a condseg host the ``pdcr`` plug-in (:class:`PDCRPlugin`) captures the sites by forward hooks
and puts the terms into the training-only auxiliary outputs (``pdcr/<term>/a``, ``.../b``,
``.../boxes_a``, ``.../boxes_b``); in eval mode it does nothing, so it is absent from
evaluation, prediction and the exported graph.

Without a condseg host (e.g. an nnU-Net trainer), :class:`PatchDragsaw` is the same module
given the sites' channels (in network order: the default N of a site is
:data:`PAPER_SAMPLES` at its position), any dimension. Either hand it the feature maps::

    from condseg.methods.pdcr_uafr.losses import pdcr_loss
    from condseg.methods.pdcr_uafr.pdcr import PatchDragsaw, receptive_field_of

    pdcr = PatchDragsaw({"encoder1": 32, "encoder2": 64, "encoder3": 128, "decoder1": 64},
                        layers=["encoder2", "encoder3", "decoder1"],
                        cross=[("encoder2", "encoder3")], dims=3)
    terms = pdcr.terms({"encoder2": f2, "encoder3": f3, "decoder1": d1}, image=x.shape[2:])
    loss = pdcr_loss(terms, target, classes=K)  # target (B, 1, D, H, W) ids; K incl. background

or let it sample the sites' outputs by forward hooks during training (keep it as a submodule of
the network, so that checkpoints hold its projections)::

    network.pdcr = pdcr
    pdcr.hook(network, {"encoder2": "encoder.stages.1", "encoder3": "encoder.stages.2",
                        "decoder1": "decoder.stages.0"})
    logits = network(x)                        # training mode: the sites are sampled
    loss = pdcr_loss(pdcr.captured_terms(x.shape[2:]), target, classes=K)

RF-PDCR on an encoder site: ``pdcr.fields["encoder2"] = receptive_field_of(network,
"encoder.stages.1", dims=3)`` (the main path of convolutions and poolings from the input). Hook
UAFR before PDCR on a site, so that PDCR samples the re-weighted features, as the paper does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from condseg.errors import PluginError
from condseg.models.base import ModelOutput, PluginSite, SegmentationModel
from condseg.models.plugins import Plugin, pick_sites, register_plugin

#: §V-A: N per layer, in the order of the host's sites (encoder stages, then decoder blocks).
PAPER_SAMPLES = (128, 64, 32, 8, 8, 8, 8, 8)
#: Module names of residual shortcuts, which the receptive field's main path leaves out
#: (``skip``: the residual blocks of nnU-Net's dynamic-network-architectures).
_SHORTCUTS = ("downsample", "shortcut", "skip")
#: Layers that move the receptive field: convolutions and poolings of any dimension.
_FIELD_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                 nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
#: The convolution of each number of spatial dimensions.
CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class Term(NamedTuple):
    """One term of Eq. 12: the vectors whose pairs it contrasts and their patches."""

    name: str
    a: Tensor
    b: Tensor
    boxes_a: Tensor
    boxes_b: Tensor


class Sampled(NamedTuple):
    """The grid of vectors of a site, (B, C, *grid), and the spatial shape it was taken from."""

    grid: Tensor
    shape: tuple[int, ...]


def term_outputs(term: Term) -> dict[str, Tensor]:
    return {f"pdcr/{term.name}/{part}": getattr(term, part)
            for part in ("a", "b", "boxes_a", "boxes_b")}


def terms_of(aux: Mapping[str, Tensor]) -> list[Term]:
    """The PDCR terms in a model's auxiliary outputs (none in eval mode)."""
    names = [key[len("pdcr/"):-len("/a")] for key in aux
             if key.startswith("pdcr/") and key.endswith("/a")]
    return [Term(name, *(aux[f"pdcr/{name}/{part}"] for part in ("a", "b", "boxes_a", "boxes_b")))
            for name in names]


def _root(n: int, dims: int) -> int:
    """The largest integer r with r ** dims <= n."""
    r = math.isqrt(n) if dims == 2 else round(n ** (1 / dims))
    while r ** dims > n:
        r -= 1
    while (r + 1) ** dims <= n:
        r += 1
    return r


def grid_shape(samples: int, dims: int = 2) -> tuple[int, ...]:
    """The sampling grid of N vectors over ``dims`` axes: on each axis in turn the largest
    divisor of what is left not above its ``dims``-th root (2-D: rows × columns)."""
    if dims == 1:
        return (samples,)
    first = max(d for d in range(1, _root(samples, dims) + 1) if samples % d == 0)
    return (first, *grid_shape(samples // first, dims - 1))


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


def _on_axis(value: Any, axis: int) -> int:
    return int(value if isinstance(value, int) else value[axis])


def layer_chain(model: nn.Module, path: str, axis: int = 0) -> list[tuple[int, int, int, int]]:
    """The convolutions and poolings from the input up to the end of submodule ``path``, in
    module order, residual shortcuts left out (the main path of a ResNet-like encoder): their
    (kernel, stride, padding, dilation) along spatial ``axis``."""
    chain, inside_seen = [], False
    for name, module in model.named_modules():
        inside = name == path or name.startswith(path + ".")
        if inside_seen and not inside:
            break
        inside_seen |= inside
        if any(part in _SHORTCUTS for part in name.split(".")):
            continue
        if isinstance(module, _FIELD_LAYERS):
            padding = getattr(module, "padding", 0)
            if isinstance(padding, str):
                raise PluginError(f"RF-PDCR cannot follow the receptive field through {name} "
                                 f"(padding {padding!r}); use the hierarchical patches there")
            chain.append((_on_axis(module.kernel_size, axis), _on_axis(module.stride, axis),
                          _on_axis(padding, axis), _on_axis(getattr(module, "dilation", 1), axis)))
    return chain


def receptive_field_of(model: nn.Module, path: str, dims: int) -> tuple[tuple[int, int, int], ...]:
    """(jump, offset, side) on each spatial axis of the output of submodule ``path``."""
    return tuple(chain_field(layer_chain(model, path, axis)) for axis in range(dims))


class PatchDragsaw(nn.Module):
    """H-PDCR on single ``layers`` and ``cross`` pairs of sites; RF-PDCR on the single-layer
    terms of the sites in :attr:`fields` (name → :func:`receptive_field_of`).

    ``sites`` maps every site of the network to its channels, in network order (encoder stages,
    then decoder blocks): the default N of a site is :data:`PAPER_SAMPLES` at its position,
    ``samples`` overrides it per site. ``patches`` are the sides of the hierarchical series,
    ``projection`` the width of the cross-layer 1×1 convolutions, ``dims`` 2 or 3.
    """

    def __init__(
        self,
        sites: Mapping[str, int],
        layers: Sequence[str],
        cross: Sequence[Sequence[str]] = (),
        samples: Mapping[str, int] | None = None,
        patches: Sequence[int] = (5, 7, 9),
        projection: int = 32,
        dims: int = 2,
    ) -> None:
        super().__init__()
        pairs = [tuple(pair) for pair in cross]
        if any(len(pair) != 2 or pair[0] == pair[1] for pair in pairs):
            raise PluginError(f"pdcr cross must list pairs of two different sites, got {cross!r}")
        if not layers and not pairs:
            raise PluginError("pdcr needs at least one site in layers or one pair in cross")
        if not patches or any(int(p) < 1 or int(p) % 2 == 0 for p in patches):
            raise PluginError(f"pdcr patches must be odd sides >= 1, got {patches!r}")
        if dims not in CONVS:
            raise PluginError(f"pdcr works on 1-, 2- or 3-D features, got dims={dims}")
        self.layers, self.pairs, self.dims = list(layers), pairs, dims
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
        self.fields: dict[str, tuple[tuple[int, int, int], ...]] = {}
        self.captured: dict[str, Sampled] = {}
        crossed = sorted({s for pair in pairs for s in pair}, key=order.index)
        self.project = nn.ModuleDict(
            {name: CONVS[dims](sites[name], projection, 1) for name in crossed})

    def sample(self, name: str, feature: Tensor) -> Sampled:
        """The grid of N vectors of a site from its feature (B, C, *spatial)."""
        counts = grid_shape(self.samples[name], self.dims)
        index = [grid_indices(length, count, feature.device).view(
                     [count if a == axis else 1 for a in range(self.dims)])
                 for axis, (length, count) in enumerate(zip(feature.shape[2:], counts,
                                                            strict=True))]
        return Sampled(feature[(slice(None), slice(None), *index)], tuple(feature.shape[2:]))

    def boxes(
        self, name: str, shape: Sequence[int], image: Sequence[int], rf: bool,
        device: torch.device,
    ) -> Tensor:
        """(N, P, 2·d) pixel boxes of the sampled vectors of a site whose output is ``shape``."""
        counts = grid_shape(self.samples[name], self.dims)
        starts, ends = [], []
        for axis, count in enumerate(counts):
            index = grid_indices(shape[axis], count, device)
            if rf:
                jump, offset, side = self.fields[name][axis]
                start = (index * jump - offset)[:, None]
                end = start + side
            else:
                start, end = hierarchical_boxes(index, shape[axis], image[axis], self.patches)
            view = [count if a == axis else 1 for a in range(self.dims)] + [start.shape[1]]
            for out, edge in ((starts, start), (ends, end)):
                out.append(edge.view(view).expand(*counts, start.shape[1]).clamp(0, image[axis]))
        boxes = torch.stack(starts + ends, dim=-1)
        return boxes.reshape(math.prod(counts), boxes.shape[-2], 2 * self.dims)

    def hook(self, network: nn.Module, paths: Mapping[str, str]) -> None:
        """Sample each used site's output, in training mode, by a forward hook on the submodule
        of ``network`` at ``paths[site]``; :meth:`captured_terms` takes them."""
        for name in self.samples:
            network.get_submodule(paths[name]).register_forward_hook(
                partial(_capture, self, name))

    def captured_terms(self, image: Sequence[int]) -> list[Term]:
        """The terms of the sites sampled since the last call (none outside training)."""
        if not self.captured:
            return []
        terms = self.sampled_terms(self.captured, image)
        self.captured.clear()
        return terms

    def terms(self, features: Mapping[str, Tensor], image: Sequence[int]) -> list[Term]:
        """The terms of Eq. 12 from the sites' feature maps (others in ``features`` are left
        alone) and the input's spatial shape."""
        return self.sampled_terms({name: self.sample(name, features[name])
                                   for name in self.samples}, image)

    def sampled_terms(self, sampled: Mapping[str, Sampled], image: Sequence[int]) -> list[Term]:
        def vectors(grid: Tensor) -> Tensor:
            return grid.flatten(2).transpose(1, 2)

        out = []
        for name in self.layers:
            grid, shape = sampled[name]
            boxes = self.boxes(name, shape, image, name in self.fields, grid.device)
            out.append(Term(name, vectors(grid), vectors(grid), boxes, boxes))
        for a, b in self.pairs:
            (grid_a, shape_a), (grid_b, shape_b) = sampled[a], sampled[b]
            out.append(Term(f"{a}~{b}", vectors(self.project[a](grid_a)),
                            vectors(self.project[b](grid_b)),
                            self.boxes(a, shape_a, image, False, grid_a.device),
                            self.boxes(b, shape_b, image, False, grid_b.device)))
        return out


@register_plugin("pdcr",
                 description="patch-dragsaw contrastive regularisation (training-only features)")
class PDCRPlugin(Plugin, PatchDragsaw):
    """:class:`PatchDragsaw` on a condseg host's sites (2-D), RF-PDCR on the single-layer terms
    of the encoder sites in ``receptive_field``.

    Defaults (the paper's best, Table VI–VII): single-layer on encoder stages 2–4 and every
    decoder block, cross-layer between encoder stages 2 and 3.
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
        if layers is None:
            layers = ["encoder2", "encoder3", "encoder4",
                      *(name for name in sites if name.startswith("decoder"))]
        # PatchDragsaw builds the module (Plugin.__init__ only initialises nn.Module).
        PatchDragsaw.__init__(self, {name: site.channels for name, site in sites.items()},
                              layers, cross, samples, patches, projection, dims=2)
        for name in receptive_field:
            if name not in self.layers or not name.startswith("encoder"):
                raise PluginError(f"pdcr receptive_field names {name!r}: RF-PDCR applies to the "
                                 "single-layer term of an encoder site listed in layers")
            self.fields[name] = receptive_field_of(model, sites[name].path, dims=2)
        self.hook(model, {name: site.path for name, site in sites.items()})
        model.register_forward_pre_hook(partial(_start, self))
        model.register_forward_hook(partial(_finish, self))


def _capture(pdcr: PatchDragsaw, name: str, module: nn.Module, args: Any, output: Tensor) -> None:
    """Samples at once: a later in-place operation of the host must not change the vectors."""
    if pdcr.training:
        pdcr.captured[name] = pdcr.sample(name, output)


def _start(plugin: PDCRPlugin, module: nn.Module, args: Any) -> None:
    plugin.captured.clear()


def _finish(plugin: PDCRPlugin, module: nn.Module, args: Any, output: ModelOutput) -> Any:
    """Adds the terms to the host's auxiliary outputs (training only)."""
    if not plugin.training:
        return None
    aux = dict(output.aux)
    for term in plugin.captured_terms(tuple(args[0].shape[2:])):
        aux.update(term_outputs(term))
    return ModelOutput(output.mask, aux)
