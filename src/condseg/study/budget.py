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
import platform
from pathlib import Path
from typing import Any

from condseg.config import RunConfig
from condseg.data.split_files import read_split
from condseg.errors import StudyError
from condseg.layout import DatasetDir
from condseg.study.spec import Budget, StudySpec
from condseg.training.cost import (
    StageCost,
    flops_per_image,
    images_per_epoch,
    seconds_per_epoch,
)
from condseg.training.plan import plan_stages, stage_parts


def epochs_within(
    budget: float, recipe: dict[str, int], per_epoch: dict[str, float], unit: str = ""
) -> dict[str, int]:
    """The epochs of each stage whose cost (``per_epoch``, in the budget's unit) fits
    ``budget``, in the proportions of the ``recipe``'s epochs: each stage's exact share rounded
    down (at least one, taken back from the stages furthest above their shares when that least
    overspends), then one epoch at a time to the stage furthest below its exact share among
    those that still fit. Refused when one epoch of every stage does not fit."""
    least = sum(per_epoch.values())
    if least > budget or least <= 0:
        raise StudyError(f"one epoch of every stage ({', '.join(recipe)}) costs "
                         f"{least:.4g}{unit}, more than the budget {budget:.4g}{unit}; give "
                         f"at least {least:.4g}{unit}" if least > 0 else
                         f"the stages ({', '.join(recipe)}) measured no cost at all")
    whole = sum(recipe[s] * per_epoch[s] for s in recipe)
    exact = {s: recipe[s] * budget / whole for s in recipe}
    epochs = {s: max(1, math.floor(exact[s])) for s in recipe}

    def spent() -> float:
        return sum(epochs[s] * per_epoch[s] for s in recipe)

    while spent() > budget:  # the least of one epoch took from the others' shares
        over = [s for s in recipe if epochs[s] > 1]
        epochs[max(over, key=lambda s: epochs[s] - exact[s])] -= 1
    while True:
        room = budget - spent()
        short = [s for s in recipe if per_epoch[s] <= room and exact[s] - epochs[s] > 0]
        if not short:
            return epochs
        epochs[max(short, key=lambda s: exact[s] - epochs[s])] += 1


def on_study_data(spec: StudySpec, config: RunConfig) -> RunConfig:
    """``config`` on the study's dataset, with the splits of its first run (fold 0's in a k-fold
    study, whose folds differ by an image at most)."""
    data = {"root": spec.data}
    if spec.folds:
        data["train_split"], data["val_split"] = DatasetDir.fold_splits(0)
    return config.model_copy(update={"data": config.data.model_copy(update=data)})


def training_processes(config: RunConfig, gpus: int) -> int:
    """The processes a run of ``config`` trains in: its devices (``auto``: the ``gpus`` its job
    gets, as Lightning takes every GPU it sees unless the accelerator says otherwise; one
    without GPUs), times its nodes."""
    devices = config.devices
    if isinstance(devices, list):
        count = len(devices)
    elif isinstance(devices, int) or str(devices).isdecimal():
        count = int(devices)
    else:
        gpu = config.accelerator.lower() in ("auto", "gpu", "cuda")
        count = max(1, gpus) if gpu else 1
    return count * config.num_nodes


def compute_budget(
    spec: StudySpec, config: RunConfig, threads: int, gpus: int = 0
) -> tuple[dict[str, int], dict[str, Any]]:
    """Each trained stage's epochs under the study's compute budget, and the record of it (for
    ``protocol.json`` and the report). ``config`` is the method's as it will train, but for its
    epochs; ``threads`` and ``gpus`` those a job will have (a time budget is calibrated with
    the threads)."""
    budget: Budget = spec.budget
    processes = training_processes(config, gpus)
    if processes > 1:
        raise StudyError(f"a compute budget counts one training process, and each run would "
                         f"train on {processes} (DDP); set devices=1 in the study's overrides, "
                         "or give each job one GPU with --jobs")
    config = on_study_data(spec, config)
    train = len(read_split(Path(config.data.root), config.data.train_split))
    stages = config.stages_to_train()
    costs = {}
    for stage, plan in plan_stages(config, stages).items():
        parts = stage_parts(plan, config)  # built once: its loss may load LossNet's VGG
        flops = flops_per_image(parts, config.data.size)
        seconds = (seconds_per_epoch(config, parts, threads=threads)
                   if budget.compute == "time" else None)
        costs[stage] = StageCost(flops, images_per_epoch(config, stage, train), seconds)
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
        record["calibrated_on"] = platform.node()
    else:
        record["budget_tflop"] = budget.flops / 1e12
    return record
