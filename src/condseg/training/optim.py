"""Optimisers and learning-rate schedules named by a stage's config.

The encoder (the model's ``encoder_path``) gets its own parameter group and learning rate, so a
transplanted or ImageNet encoder can be fine-tuned more gently than the rest. Schedules other
than ``plateau`` are per-epoch factors of each group's learning rate (epoch e of E, warm-up W):

* warm-up (poly, cosine, constant): (e + 1) / (W + 1) for e < W, then the schedule on t = e − W
  of T = E − W epochs;
* ``poly``: m + (1 − m)·(1 − t/T)^power; ``cosine``: m + (1 − m)·½(1 + cos(π t/T)), with m the
  ``min_lr_ratio``;
* ``triangular``: 1 − |2(e + 1)/(E + 1) − 1| — a linear warm-up to the peak at mid-training and
  a linear decay, as M2SNet's and CHNet's code (their warm-up is built in, so W is not used);
* ``constant``: 1.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from condseg.config import OptimizerConfig, ScheduleConfig, StageConfig
from condseg.models.base import SegmentationModel


def parameter_groups(model: SegmentationModel, cfg: OptimizerConfig) -> list[dict]:
    """``encoder`` (at ``encoder_lr``) and ``rest`` (at ``lr``); empty groups are left out."""
    encoder = model.encoder_module()
    ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    own = [p for p in model.parameters() if id(p) in ids]
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": own, "lr": cfg.encoder_lr or cfg.lr, "name": "encoder"},
              {"params": rest, "lr": cfg.lr, "name": "rest"}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: SegmentationModel, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    optimizer = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return optimizer(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def configure(model: SegmentationModel, cfg: StageConfig) -> dict:
    """The optimiser and schedule of a stage as Lightning's ``configure_optimizers`` returns
    them; built before any stage trains on the stage's network laid out on the meta device, so
    that a value torch refuses (SGD's Nesterov without momentum) is found then."""
    optimizer = build_optimizer(model, cfg.optimizer)
    return {"optimizer": optimizer,
            "lr_scheduler": build_scheduler(optimizer, cfg.schedule, cfg.max_epochs)}


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, max_epochs: int
) -> dict:
    """A Lightning ``lr_scheduler`` entry, stepped once per epoch."""
    if cfg.name == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min" if "loss" in cfg.monitor else "max", factor=cfg.factor,
            patience=cfg.patience,
        )
        return {"scheduler": scheduler, "monitor": cfg.monitor}
    factor = partial(lr_factor, cfg, max_epochs)
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor),
            "interval": "epoch"}


def lr_factor(cfg: ScheduleConfig, max_epochs: int, epoch: int) -> float:
    """The multiple of the base learning rate used in ``epoch`` (0-based; module docstring)."""
    if cfg.name == "triangular":
        return 1 - abs(2 * (epoch + 1) / (max_epochs + 1) - 1)
    warmup = min(cfg.warmup_epochs, max_epochs - 1)
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    t, total, floor = epoch - warmup, max(max_epochs - warmup, 1), cfg.min_lr_ratio
    if cfg.name == "poly":
        return floor + (1 - floor) * max(1 - t / total, 0.0) ** cfg.power
    if cfg.name == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t / total, 1.0)))
    return 1.0



