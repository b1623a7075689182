"""PDCR and UAFR on nnU-Net's U-Nets (the paper's Table II placement), 2-D or 3-D.

nnU-Net's networks (``PlainConvUNet``, ``ResidualEncoderUNet`` of
dynamic-network-architectures) have ``encoder.stages`` (stage 1 at full resolution, the last
the bottleneck) and ``decoder.stages`` (computed from the lowest resolution up). The plug-ins
attach to those modules by forward hooks and live as submodules of the network
(``network.uafr``, ``network.pdcr``), so nnU-Net's checkpoint holds their weights and the
predictor, which rebuilds the network through the same ``build_network_architecture``, loads
it strictly:

* UAFR after every decoder stage (Eqs. 13–15), M = nnU-Net's segmentation heads (classes with
  background); part of inference.
* PDCR (training only) on encoder stages 2–4 and every decoder stage, and across encoder stages
  2 and 3 (each projected to 32 channels), N vectors per site as in the 2-D plug-in, patches of
  5, 7 and 9 pixels (cubes in 3-D); φ over the M classes of nnU-Net's label map (Eqs. 3–4).
  Its loss is added, × 0.01, to nnU-Net's Dice + CE (deep supervision kept) by :class:`WithPDCR`.

Both are condseg's one implementation of the plug-ins (:mod:`condseg.methods.pdcr_uafr`,
dimension-generic); this module only says where they go on nnU-Net's networks.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import Tensor, nn

from condseg.data.labels import IGNORE_ID
from condseg.methods.pdcr_uafr.losses import pdcr_loss
from condseg.methods.pdcr_uafr.pdcr import PatchDragsaw
from condseg.methods.pdcr_uafr.uafr import UAFR

#: The paper's weight of PDCR beside the segmentation loss (§V-A).
PDCR_WEIGHT = 0.01
#: The paper's single-layer sites (encoder stages 2–4 and, added below, every decoder stage)
#: and its cross-layer pair.
PDCR_ENCODER = ("encoder2", "encoder3", "encoder4")
PDCR_CROSS = (("encoder2", "encoder3"),)


def sites(network: nn.Module) -> dict[str, tuple[str, int]]:
    """Every site of an nnU-Net U-Net: name → (module path, channels), encoder stages then
    decoder stages, numbered from 1."""
    channels = list(network.encoder.output_channels)
    found = {f"encoder{i + 1}": (f"encoder.stages.{i}", c) for i, c in enumerate(channels)}
    found.update({f"decoder{s + 1}": (f"decoder.stages.{s}", channels[-(s + 2)])
                  for s in range(len(network.decoder.stages))})
    return found


def dims_of(network: nn.Module) -> int:
    return 3 if issubclass(network.encoder.conv_op, nn.Conv3d) else 2


def add_uafr(network: nn.Module, classes: int) -> nn.Module:
    """UAFR after every decoder stage of ``network`` (in place; returned). Added before PDCR,
    so that PDCR samples the re-weighted features, as the paper does."""
    chosen = {name: site for name, site in sites(network).items() if name.startswith("decoder")}
    dims = dims_of(network)
    network.uafr = nn.ModuleDict({name: UAFR(c, max(classes, 2), dims=dims)
                                  for name, (_, c) in chosen.items()})
    for name, (path, _) in chosen.items():
        network.get_submodule(path).register_forward_hook(partial(_reweight, network.uafr, name))
    return network


def _reweight(blocks: nn.ModuleDict, name: str, module: nn.Module, args: Any,
              output: Tensor) -> Tensor:
    return blocks[name](output)


def add_pdcr(network: nn.Module) -> nn.Module:
    """PDCR's sampling hooks and cross-layer projections as ``network.pdcr`` (in place)."""
    found = sites(network)
    layers = [n for n in PDCR_ENCODER if n in found] + [n for n in found
                                                        if n.startswith("decoder")]
    cross = [pair for pair in PDCR_CROSS if set(pair) <= set(found)]
    network.pdcr = PatchDragsaw({name: c for name, (_, c) in found.items()}, layers, cross,
                                dims=dims_of(network))
    network.pdcr.hook(network, {name: path for name, (path, _) in found.items()})
    return network


class WithPDCR(nn.Module):
    """nnU-Net's loss + weight × PDCR of the last training forward pass against the
    full-resolution label map (nothing is captured in evaluation, where the loss is nnU-Net's
    alone). ``ignore`` is nnU-Net's ignore label, if any; ``last`` keeps the latest PDCR."""

    def __init__(self, loss: nn.Module, pdcr: PatchDragsaw, classes: int,
                 ignore: int | None = None, weight: float = PDCR_WEIGHT) -> None:
        super().__init__()
        self.loss, self.pdcr, self.classes, self.weight = loss, pdcr, classes, weight
        self.ignore = IGNORE_ID if ignore is None else ignore
        self.last: Tensor | None = None

    def forward(self, output: Any, target: Any) -> Tensor:
        base = self.loss(output, target)
        labels = target[0] if isinstance(target, list | tuple) else target
        terms = self.pdcr.captured_terms(tuple(labels.shape[2:]))
        if not terms:
            return base
        pdcr = pdcr_loss(terms, labels, self.classes, ignore=self.ignore)
        self.last = pdcr.detach()
        return base + self.weight * pdcr
