"""The ensemble model: several trained models (the folds of a cross-validation, the seeds of a
multi-seed run) whose mask and map *probabilities* are averaged.

It is an ordinary registered :class:`SegmentationModel` (``"ensemble"``) whose options list its
members' architectures, so an ensemble is one self-contained model file — every member's weights
under ``members.<i>.`` — that ``load_model``, ``evaluate``, ``predict``, ``export`` and
``compare`` take like any other. Its output follows the contract (logits): the logit of the mean
probability, so that ``sigmoid`` gives back exactly the average of the members' probabilities —
or, for members of K >= 2 classes (all of the same K and class names), the log of the mean
probabilities, so that ``softmax`` gives back their average.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condseg.errors import EnsembleError
from condseg.models.base import ModelOutput, SegmentationModel, class_names, require_model
from condseg.models.model_file import load_model, save_model
from condseg.models.registry import create_model, register_model


def mean_probability_logits(logits: Sequence[Tensor]) -> Tensor:
    """Logits whose sigmoid (one channel) or softmax over the channels (K >= 2) is the mean of
    those of ``logits`` (each (B, C, H, W)).

    One channel: log(mean σ(z)) − log(mean σ(−z)); K: log(mean softmax(z)); with log σ and
    log softmax computed stably. Averaging probabilities, not logits (a confident member must
    not outvote the others by its logit's size), with no clamp.
    """
    z = torch.stack([t.float() for t in logits])
    if z.shape[2] == 1:
        return torch.logsumexp(F.logsigmoid(z), 0) - torch.logsumexp(F.logsigmoid(-z), 0)
    return torch.logsumexp(F.log_softmax(z, dim=2), 0) - math.log(len(logits))


@register_model("ensemble", description="the mean probability of member models (k-fold or "
                                        "multi-seed; written by condseg cv)")
class Ensemble(SegmentationModel):
    """Members ``[{"name", "options", "mean", "std"}, ...]``; the first member's normalisation
    is the ensemble's input, the others get theirs by an exact affine re-normalisation."""

    encoder_path = None

    def __init__(self, members: Sequence[Mapping[str, Any]], num_classes: int = 1) -> None:
        super().__init__()
        if not members:
            raise EnsembleError("an ensemble needs at least one member")
        self.members = nn.ModuleList(
            create_model(m["name"], **dict(m.get("options", {}))) for m in members
        )
        other = [i for i, m in enumerate(self.members) if m.num_classes != num_classes]
        if other:
            raise EnsembleError(
                f"ensemble members must all have num_classes={num_classes}; member "
                f"{other[0]} ({self.members[other[0]].name}) has "
                f"{self.members[other[0]].num_classes}")
        self.num_classes = num_classes
        self.input_divisor = math.lcm(*(m.input_divisor for m in self.members))
        first = self.members[0].map_names
        self.map_names = tuple(k for k in first if all(k in m.map_names for m in self.members))
        base = _affine(members[0])
        self._renormalize = [_renormalization(base, _affine(m)) for m in members]

    def forward(self, x: Tensor) -> ModelOutput:
        outputs = []
        for member, renormalize in zip(self.members, self._renormalize, strict=True):
            if renormalize is not None:
                scale, shift = renormalize
                outputs.append(member(x * scale.to(x) + shift.to(x)))
            else:
                outputs.append(member(x))
        mask = mean_probability_logits([out.mask for out in outputs])
        return ModelOutput(mask, {key: mean_probability_logits([out.aux[key] for out in outputs])
                                  for key in self.map_names})


def _affine(member: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """(mean, std) as (3, 1, 1) CPU tensors (also when the model is laid out on the meta device
    to check a file); None means no shift / no scaling."""
    mean, std = member.get("mean"), member.get("std")
    return (torch.tensor(mean if mean is not None else [0.0] * 3, device="cpu").view(3, 1, 1),
            torch.tensor(std if std is not None else [1.0] * 3, device="cpu").view(3, 1, 1))


def _renormalization(
    base: tuple[Tensor, Tensor], own: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor] | None:
    """(scale, shift) taking an input normalised with ``base`` to one normalised with ``own``:
    ((x·s₀ + m₀) − m)/s; None when they are the same."""
    if torch.equal(base[0], own[0]) and torch.equal(base[1], own[1]):
        return None
    scale = base[1] / own[1]
    return scale, (base[0] - own[0]) / own[1]


def build_ensemble(model_files: Sequence[str | Path]) -> SegmentationModel:
    """An ensemble of the model files, with their weights; its ``meta`` has the shared input
    size and the first member's normalisation (what :func:`save_ensemble` writes)."""
    if not model_files:
        raise EnsembleError("an ensemble needs at least one model file")
    loaded = [require_model(load_model(path)) for path in model_files]
    sizes = {tuple(m.meta["input_size"]) for m in loaded}
    if len(sizes) > 1:
        listed = ", ".join(f"{p} ({'x'.join(map(str, m.meta['input_size']))})"
                           for p, m in zip(model_files, loaded, strict=True))
        raise EnsembleError(f"ensemble members must share one input size; got {listed}. Train "
                            "them at the same data.size")
    names = _shared_classes(model_files, loaded)
    members = [{**m.meta["arch"], "mean": m.meta["mean"], "std": m.meta["std"]} for m in loaded]
    ensemble = create_model("ensemble", members=members, num_classes=loaded[0].num_classes)
    for target, source in zip(ensemble.members, loaded, strict=True):
        target.load_state_dict(source.state_dict())
    first = loaded[0].meta
    ensemble.meta = {"input_size": first["input_size"], "mean": first["mean"],
                     "std": first["std"], "config": first.get("config"), "arch": ensemble.arch,
                     **({"classes": list(names)} if names is not None else {})}
    return ensemble.eval()


def _shared_classes(
    files: Sequence[str | Path], loaded: Sequence[SegmentationModel]
) -> tuple[str, ...] | None:
    """The class names all members share (None: all binary), else one line listing each
    file's: averaging the probabilities of different classes means nothing."""
    names = [class_names(m) for m in loaded]
    if any(n != names[0] for n in names):
        listed = "; ".join(f"{path}: {_describe(n)}"
                           for path, n in zip(files, names, strict=True))
        raise EnsembleError(f"ensemble members must share their classes; got {listed}. Train "
                            "them on one dataset (the same labels.json)")
    return names[0]


def _describe(names: Sequence[str] | None) -> str:
    return "binary" if names is None else f"{len(names)} classes ({', '.join(names)})"


def save_ensemble(
    path: str | Path,
    model_files: Sequence[str | Path],
    *,
    metrics: Mapping[str, Any] | None = None,
    config: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write one model file holding the ensemble of ``model_files`` (all weights included, so
    it can be moved and shared alone). ``metrics`` and ``config`` (default: the first
    member's) go into its header."""
    ensemble = build_ensemble(model_files)
    meta = ensemble.meta or {}
    return save_model(path, ensemble, mean=meta["mean"], std=meta["std"],
                      input_size=meta["input_size"], metrics=metrics,
                      config=config if config is not None else meta.get("config"),
                      overwrite=overwrite)
