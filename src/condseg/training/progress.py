"""Progress where users look: a live bar on a terminal, plain lines in a log file or a job.

A live bar written to a file shows up only at the end (or as control characters), so when the
console is not a terminal, :class:`ProgressLines` prints one line every few steps and one per
epoch with its validation figures. Epochs are numbered from 1, as users count them.
"""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import Callback, RichProgressBar
from rich.console import Console

_SHOWN = (("val/loss", "val loss"), ("val/miou", "mIoU"), ("val/mdsc", "mDSC"),
          ("val/recall", "recall"), ("val/precision", "precision"))


class ProgressBar(RichProgressBar):
    """Rich's bar without Lightning's ``v_num``, with epochs counted from 1."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{self.stage} epoch {current_epoch + 1}/{self.trainer.max_epochs}"


class ProgressLines(Callback):
    """Plain progress lines: every ``every_n_steps`` training steps, and after each validation."""

    def __init__(self, console: Console, stage: str, every_n_steps: int) -> None:
        self.console, self.stage, self.every_n_steps = console, stage, every_n_steps
        self._start = time.perf_counter()
        self._losses: list[float] = []

    def _print(self, trainer: L.Trainer, text: str) -> None:
        if trainer.is_global_zero:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def _epoch(self, trainer: L.Trainer) -> str:
        return f"{self.stage} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._losses = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs,
                           batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._losses.append(float(loss))
        if (batch_idx + 1) % self.every_n_steps == 0 and self._losses:
            self._print(trainer, f"{self._epoch(trainer)} step {batch_idx + 1}/"
                                 f"{trainer.num_training_batches} loss {self._losses[-1]:.4f}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        parts = [f"{label} {float(metrics[key]):.4f}" for key, label in _SHOWN if key in metrics]
        if self._losses:  # this epoch's mean (Lightning's epoch mean is logged only later)
            parts.insert(0, f"train loss {sum(self._losses) / len(self._losses):.4f}")
        seconds = time.perf_counter() - self._start
        self._print(trainer, f"{self._epoch(trainer)}: {', '.join(parts)} ({seconds:.0f} s)")


def progress_callbacks(console: Console, stage: str, enabled: bool,
                       every_n_steps: int) -> list[Callback]:
    """The bar on a terminal, lines elsewhere, nothing when progress is off."""
    if not enabled:
        return []
    if console.is_terminal:
        return [ProgressBar(stage)]
    return [ProgressLines(console, stage, every_n_steps)]
