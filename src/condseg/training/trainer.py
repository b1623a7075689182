"""The Lightning Trainer of one stage: its checkpoints (the best by validation mIoU, and
``last.ckpt`` to resume from), early stopping, loggers (CSV per attempt, TensorBoard), each
epoch's cost, progress and the atomic checkpoint writer."""

from __future__ import annotations

from datetime import timedelta

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from rich.console import Console

from condseg.config import RunConfig
from condseg.layout import StageDir
from condseg.training.checkpoints import AtomicCheckpointIO, RunCheckpoint
from condseg.training.epoch_cost import EpochCost
from condseg.training.logs import TensorBoardExtras, flat_config
from condseg.training.plan import StagePlan
from condseg.training.progress import ProgressBar, progress_callbacks
from condseg.training.resources import ParentWatch


def build_trainer(
    plan: StagePlan, config: RunConfig, stage: StageDir, normalization: tuple,
    console: Console, log: Console | None = None, *, flops_per_image: float,
) -> tuple[L.Trainer, RunCheckpoint]:
    """The stage's Trainer and its best-checkpoint callback (whose path the export reads).
    ``normalization`` (mean, std) undoes the inputs for TensorBoard's prediction grids; what
    ``console`` shows of the progress is also written to ``log``; ``flops_per_image`` (the
    stage's training FLOPs per image) prices each epoch's images in its log."""
    cfg = plan.cfg
    best = RunCheckpoint(
        dirpath=stage.checkpoints, filename=stage.best_checkpoint.stem, monitor="val/miou",
        mode="max", save_top_k=1, enable_version_counter=False,
    )
    callbacks = [best, *_last_checkpoints(config, stage),
                 _EarlyStopping("val/miou", mode="max", patience=cfg.early_stop_patience),
                 LearningRateMonitor("epoch"), ParentWatch(), EpochCost(flops_per_image),
                 TensorBoardExtras(flat_config(config.model_dump(mode="json")),
                                   config.log_images_every_n_epochs, *normalization),
                 *progress_callbacks(console, plan.name, config.progress_bar,
                                     config.log_every_n_steps, log)]
    trainer = L.Trainer(
        max_epochs=cfg.max_epochs, accelerator=config.accelerator, devices=config.devices,
        strategy=config.strategy, num_nodes=config.num_nodes, precision=plan.precision,
        callbacks=callbacks, limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=cfg.limit_val_batches, log_every_n_steps=config.log_every_n_steps,
        logger=[CSVLogger(stage.path, name=stage.csv_logs.name,  # version_K: one per attempt
                          flush_logs_every_n_steps=config.log_every_n_steps),
                TensorBoardLogger(stage.path, name="", version=stage.tensorboard.name,
                                  default_hp_metric=False)],
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=stage.path, plugins=[AtomicCheckpointIO()],
    )
    return trainer, best


class _EarlyStopping(EarlyStopping):
    """Keeps the configured patience on resume (Lightning restores the checkpoint's), so that
    ``--resume RUN stages.X.early_stop_patience=N`` takes effect."""

    def load_state_dict(self, state_dict: dict) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience


def _last_checkpoints(config: RunConfig, stage: StageDir) -> list[Callback]:
    """``last.ckpt`` after every epoch's validation, and within epochs every N steps or M
    minutes, so that a kill loses one interval, not an epoch."""
    common = {"dirpath": stage.checkpoints, "filename": stage.last_checkpoint.stem,
              "monitor": None, "save_top_k": 1, "enable_version_counter": False}
    within = (
        {"every_n_train_steps": config.checkpoint_every_n_steps}
        if config.checkpoint_every_n_steps is not None else
        {"train_time_interval": timedelta(minutes=config.checkpoint_every_minutes)}
        if config.checkpoint_every_minutes is not None else None
    )
    epochs = RunCheckpoint(every_n_epochs=1, **common)
    return [epochs] if within is None else [epochs, RunCheckpoint(**within, **common)]
