"""A compute budget made into each method's epochs, and the record of what each method got.

A budget of FLOPs (machine-independent) or of time (this machine) buys every run of a method
the same compute. Each trained stage's cost per epoch is measured — FLOPs by torch's counter
over one training step (:mod:`condseg.training.cost`), seconds by a short calibration here —
and the method's stages share the budget as its recipe shares its epochs: the most epochs, in
those proportions, that fit. The schedules (warm-up, decay, cosine) are laid over the epochs a
stage gets, since they follow ``max_epochs``; nothing is cut short.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from condseg.config import RunConfig
from condseg.data.split_files import read_split
from condseg.errors import StudyError
from condseg.layout import DatasetDir
from condseg.study.spec import Budget, StudySpec
from condseg.training.cost import StageCost, images_per_epoch, seconds_per_epoch, stage_flops


def epochs_within(
    budget: float, recipe: dict[str, int], per_epoch: dict[str, float], unit: str = ""
) -> dict[str, int]:
    """The epochs of each stage whose cost (``per_epoch``, in the budget's unit) fits
    ``budget``, in the proportions of the ``recipe``'s epochs: each stage's exact share rounded
    down (at least one), then one epoch at a time to the stage furthest below its exact share
    among those that still fit. Refused when one epoch of every stage does not fit."""
    whole = sum(recipe[s] * per_epoch[s] for s in recipe)
    exact = {s: recipe[s] * budget / whole for s in recipe}
    epochs = {s: max(1, math.floor(exact[s])) for s in recipe}
    least = sum(per_epoch.values())
    if least > budget:
        raise StudyError(f"one epoch of every stage ({', '.join(recipe)}) costs "
                         f"{least:.4g}{unit}, more than the budget {budget:.4g}{unit}; give "
                         f"at least {least:.4g}{unit}")
    while True:
        room = budget - sum(epochs[s] * per_epoch[s] for s in recipe)
        short = [s for s in recipe if per_epoch[s] <= room and exact[s] - epochs[s] > 0]
        if not short:
            return epochs
        epochs[max(short, key=lambda s: exact[s] - epochs[s])] += 1


def split_sizes(spec: StudySpec, config: RunConfig) -> tuple[int, int]:
    """Training and validation images of a run: the dataset's splits (fold 0's in a k-fold
    study, whose folds differ by an image at most)."""
    assert spec.data is not None  # a study resolves its methods on its dataset
    train, val = (DatasetDir.fold_splits(0) if spec.folds else
                  (config.data.train_split, config.data.val_split))
    return len(read_split(Path(spec.data), train)), len(read_split(Path(spec.data), val))


def compute_budget(
    spec: StudySpec, config: RunConfig, threads: int
) -> tuple[dict[str, int], dict[str, Any]]:
    """Each trained stage's epochs under the study's compute budget, and the record of it (for
    ``protocol.json`` and the report). ``config`` is the method's as it will train, but for its
    epochs; ``threads`` those a local job will have (a time budget is calibrated with them)."""
    budget: Budget = spec.budget
    train, val = split_sizes(spec, config)
    stages = config.stages_to_train()
    costs = {}
    for stage in stages:
        seconds = (seconds_per_epoch(config, stage, train, val, threads=threads)
                   if budget.compute == "time" else None)
        costs[stage] = StageCost(stage_flops(config, stage),
                                 images_per_epoch(config, stage, train), seconds)
    recipe = {s: config.stages[s].max_epochs for s in stages}
    if budget.compute == "flops":
        epochs = epochs_within(budget.flops, recipe, {s: c.flops_per_epoch
                                                      for s, c in costs.items()}, " FLOPs")
    else:
        epochs = epochs_within(budget.seconds, recipe, {s: c.seconds_per_epoch
                                                        for s, c in costs.items()}, " s")
    return epochs, _record(budget, costs, epochs, train, threads)


def _record(
    budget: Budget, costs: dict[str, StageCost], epochs: dict[str, int], train: int,
    threads: int,
) -> dict[str, Any]:
    stages = {s: {"gflop_per_image": c.flops_per_image / 1e9,
                  "images_per_epoch": c.images_per_epoch,
                  "tflop_per_epoch": c.flops_per_epoch / 1e12,
                  "seconds_per_epoch": c.seconds_per_epoch,
                  "epochs": epochs[s]} for s, c in costs.items()}
    record: dict[str, Any] = {
        "kind": budget.compute, "train_images": train, "stages": stages,
        "planned_tflop": sum(c.flops_per_epoch * epochs[s] for s, c in costs.items()) / 1e12,
    }
    if budget.compute == "time":
        record["budget_seconds"] = budget.seconds
        record["planned_seconds"] = sum(c.seconds_per_epoch * epochs[s]
                                        for s, c in costs.items())
        record["calibrated_threads"] = threads
    else:
        record["budget_tflop"] = budget.flops / 1e12
    return record
