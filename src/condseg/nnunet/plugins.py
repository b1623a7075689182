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
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from condseg.methods.pdcr_uafr.pdcr import PAPER_SAMPLES
from condseg.nnunet.interim import UAFR, boxes, sample, term_loss

#: The paper's weight of PDCR beside the segmentation loss (§V-A).
PDCR_WEIGHT = 0.01
PATCHES = (5, 7, 9)
PROJECTION = 32


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
    """UAFR after every decoder stage of ``network`` (in place; returned)."""
    chosen = {name: site for name, site in sites(network).items() if name.startswith("decoder")}
    dims = dims_of(network)
    network.uafr = nn.ModuleDict({name: UAFR(c, max(classes, 2), dims)
                                  for name, (_, c) in chosen.items()})
    for name, (path, _) in chosen.items():
        network.get_submodule(path).register_forward_hook(partial(_reweight, network.uafr, name))
    return network


def _reweight(blocks: nn.ModuleDict, name: str, module: nn.Module, args: Any,
              output: Tensor) -> Tensor:
    return blocks[name](output)


class PDCR(nn.Module):
    """The training-only side of PDCR on one network: what it samples where, the cross-layer
    projections, and the loss of the vectors a training forward pass captured."""

    def __init__(self, network: nn.Module, layers: Sequence[str] | None = None,
                 cross: Sequence[tuple[str, str]] = (("encoder2", "encoder3"),)) -> None:
        super().__init__()
        found = sites(network)
        if layers is None:
            layers = [n for n in ("encoder2", "encoder3", "encoder4") if n in found] + [
                n for n in found if n.startswith("decoder")]
        self.layers, self.pairs = list(layers), [tuple(p) for p in cross if set(p) <= set(found)]
        used = {*self.layers, *(s for pair in self.pairs for s in pair)}
        order = list(found)
        self.samples = {n: PAPER_SAMPLES[min(order.index(n), len(PAPER_SAMPLES) - 1)]
                        for n in used}
        conv = (nn.Conv2d, nn.Conv3d)[dims_of(network) - 2]
        self.project = nn.ModuleDict({n: conv(found[n][1], PROJECTION, 1)
                                      for pair in self.pairs for n in pair})
        self.captured: dict[str, tuple[Tensor, tuple[int, ...]]] = {}
        for name in sorted(used, key=order.index):
            network.get_submodule(found[name][0]).register_forward_hook(
                partial(_capture, self, name))

    def vectors(self, name: str, project: bool) -> Tensor:
        feature, _ = self.captured[name]
        return sample(self.project[name](feature) if project else feature, self.samples[name])

    def patches(self, name: str, image: Sequence[int], device: torch.device) -> Tensor:
        return boxes(self.samples[name], self.captured[name][1], image, PATCHES).to(device)

    def loss(self, labels: Tensor, classes: int) -> Tensor:
        """Σ over the terms of Eq. 12 for the label map ``labels`` (B, 1, *S) at the input's
        resolution; forgets what was captured."""
        image, device = tuple(labels.shape[2:]), labels.device
        total = labels.new_zeros((), dtype=torch.float32)
        for name in self.layers:
            box = self.patches(name, image, device)
            v = self.vectors(name, False)
            total = total + term_loss(v, v, box, box, labels, classes)
        for a, b in self.pairs:
            total = total + term_loss(self.vectors(a, True), self.vectors(b, True),
                                      self.patches(a, image, device),
                                      self.patches(b, image, device), labels, classes)
        self.captured.clear()
        return total


def _capture(pdcr: PDCR, name: str, module: nn.Module, args: Any, output: Tensor) -> None:
    if pdcr.training:
        pdcr.captured[name] = (output, tuple(output.shape[2:]))


def add_pdcr(network: nn.Module) -> nn.Module:
    network.pdcr = PDCR(network)
    return network


class WithPDCR(nn.Module):
    """nnU-Net's loss + weight × PDCR of the last training forward pass (nothing is captured in
    evaluation, where the loss is nnU-Net's alone). ``last`` keeps the latest PDCR value."""

    def __init__(self, loss: nn.Module, pdcr: PDCR, classes: int,
                 weight: float = PDCR_WEIGHT) -> None:
        super().__init__()
        self.loss, self.pdcr, self.classes, self.weight = loss, pdcr, classes, weight
        self.last: Tensor | None = None

    def forward(self, output: Any, target: Any) -> Tensor:
        base = self.loss(output, target)
        if not self.pdcr.captured:
            return base
        labels = target[0] if isinstance(target, list | tuple) else target
        pdcr = self.pdcr.loss(labels, self.classes)
        self.last = pdcr.detach()
        return base + self.weight * pdcr
