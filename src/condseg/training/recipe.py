"""The run as it will really execute: the training precision resolved for this machine, and
the run header that ``train`` prints before the first step (each stage's plan with its
parameter count), so that what a log says was run is what ran (nothing left to a default the
reader cannot see)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from condseg.config import RunConfig
from condseg.data.dataset import read_split
from condseg.inference.engine import cpu_supports_bf16
from condseg.layout import DatasetDir
from condseg.losses.base import LOSSES
from condseg.models.registry import create_model
from condseg.training.classes import run_classes
from condseg.training.plan import StagePlan


def training_device(config: RunConfig) -> str:
    """The device type Lightning will train on: a CUDA GPU when asked for or (accelerator
    auto) when torch sees one, else what the accelerator names."""
    accelerator = config.accelerator.lower()
    if accelerator in ("auto", "gpu", "cuda"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return accelerator


def resolve_precision(config: RunConfig) -> RunConfig:
    """``precision: auto`` made concrete: bf16-mixed where the training device runs bf16
    natively (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX), else 32 (emulated bf16 is
    slower than float32). The resolved value is what config.yaml records."""
    if config.precision != "auto":
        return config
    device = training_device(config)
    native = (torch.cuda.is_bf16_supported() if device == "cuda"
              else cpu_supports_bf16() if device == "cpu" else False)
    return config.model_copy(update={"precision": "bf16-mixed" if native else "32"})


def count_parameters(model_name: str, options: dict[str, Any]) -> int:
    """Parameters of the network, built on the meta device (no memory, no weights fetched)."""
    with torch.device("meta"):
        net = create_model(model_name, pretrained=False, **options)
    return sum(p.numel() for p in net.parameters())


def split_counts(root: Path, config: RunConfig) -> dict[str, int]:
    """Names listed per split: train, val, and test when the dataset has one."""
    data = config.data
    splits = {"train": data.train_split, "val": data.val_split}
    if DatasetDir(root).has_split(data.test_split):
        splits["test"] = data.test_split
    return {label: len(read_split(root, split)) for label, split in splits.items()}


def header_lines(config: RunConfig, plans: Iterable[StagePlan]) -> list[str]:
    """The run header: device and precision, dataset sizes, the classes of a K-class run, and
    per stage the resolved recipe (model and parameters, loss (and its K-class form),
    optimiser and learning rates, schedule, epochs, size, batch)."""
    data = config.data
    counts = ", ".join(f"{label} {n}" for label, n in split_counts(data.root, config).items())
    skipped = f"; {len(data.skip)} excluded by data.skip" if data.skip else ""
    lines = [
        f"method {config.method}: device {training_device(config)} (devices {config.devices}), "
        f"precision {config.precision}, seed {config.seed}",
        f"data {data.root}: {counts}{skipped}",
    ]
    classes = run_classes(config)
    if classes is not None:
        lines.append(f"classes: {', '.join(classes)} (K {len(classes)}, from "
                     f"{DatasetDir(data.root).labels.name}; softmax over K maps)")
    for plan in plans:
        cfg, opt = plan.cfg, plan.cfg.optimizer
        encoder = f" (encoder {opt.encoder_lr:g})" if opt.encoder_lr is not None else ""
        hook = f", batch hook {cfg.batch_hook.name}" if cfg.batch_hook is not None else ""
        lines.append(
            f"{plan.name}: {plan.model} ({count_parameters(plan.model, plan.options):,} "
            f"parameters), loss {cfg.loss.name}{_multiclass(cfg.loss.name, classes)}, "
            f"{opt.name} lr {opt.lr:g}{encoder}, schedule "
            f"{cfg.schedule.name}, "
            f"epochs {cfg.max_epochs}, size {data.size}, batch {data.batch_size}{hook}"
        )
    return lines


def _multiclass(loss: str, classes: tuple[str, ...] | None) -> str:
    """How the loss takes K classes (the mapping of docs/decisions.md), for a K-class run."""
    form = LOSSES.get(loss).multiclass if classes is not None else ""
    return f" (with K classes: {form})" if form else ""


def print_header(config: RunConfig, plans: Iterable[StagePlan], console: Console) -> None:
    for line in header_lines(config, plans):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
