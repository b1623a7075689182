"""Progress where users look: a live bar on a terminal, plain lines in a log file or a job.

A live bar written to a file shows up only at the end (or as control characters), so when the
console is not a terminal, :class:`ProgressLines` prints one line every few steps and one per
epoch with its validation figures, and the time the stage has left (ETA: the mean epoch so far
times the epochs left; early stopping may end it sooner). Epochs are numbered from 1, as users
count them; scores are in percent, as in every table. A run of K >= 2 classes adds each
foreground class's Dice.
"""

from __future__ import annotations

import time
from datetime import timedelta

import lightning as L
from lightning.pytorch.callbacks import Callback, RichProgressBar
from rich.console import Console

from condseg.evaluation.names import display_name, percent

_SHOWN = (("val/loss", "val L_mask"), ("val/miou", display_name("iou")),
          ("val/mdsc", display_name("dice")),
          ("val/recall", "recall"), ("val/precision", "precision"))
PERCENT = frozenset({"val/miou", "val/mdsc", "val/recall", "val/precision"})
#: With K >= 2 classes, each foreground class's validation Dice: ``val/dice/<class>``.
CLASS_DICE = "val/dice/"


def _is_percent(key: str) -> bool:
    return key in PERCENT or key.startswith(CLASS_DICE)


def _shown(key: str, value: float) -> float:
    return 100 * value if _is_percent(key) else value


def _figure(key: str, value: float) -> str:
    return f"{percent(value)}%" if _is_percent(key) else f"{value:.4f}"


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class ProgressBar(RichProgressBar):
    """Rich's bar without Lightning's ``v_num``, with epochs counted from 1."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {k: _shown(k, v) if isinstance(v, float) else v for k, v in metrics.items()}

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{self.stage} epoch {current_epoch + 1}/{self.trainer.max_epochs}"


class ProgressLines(Callback):
    """Plain progress lines: every ``every_n_steps`` training steps (None: none), and after each
    validation."""

    def __init__(self, console: Console, stage: str, every_n_steps: int | None) -> None:
        self.console, self.stage, self.every_n_steps = console, stage, every_n_steps
        self._start = time.perf_counter()
        self._losses: list[float] = []
        self._epochs: list[float] = []  # durations of this attempt's epochs (with validation)

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
        if self.every_n_steps and (batch_idx + 1) % self.every_n_steps == 0 and self._losses:
            steps = trainer.num_training_batches
            per_step = (time.perf_counter() - self._start) / (batch_idx + 1)
            epoch = sum(self._epochs) / len(self._epochs) if self._epochs else per_step * steps
            left = per_step * (steps - batch_idx - 1) + epoch * self._epochs_left(trainer)
            self._print(trainer, f"{self._epoch(trainer)} step {batch_idx + 1}/{steps} loss "
                                 f"{self._losses[-1]:.4f} (ETA {_duration(left)})")

    def _epochs_left(self, trainer: L.Trainer) -> int:
        return trainer.max_epochs - trainer.current_epoch - 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        shown = [*_SHOWN, *((key, f"Dice {key.removeprefix(CLASS_DICE)}")
                            for key in metrics if key.startswith(CLASS_DICE))]
        parts = [f"{label} {_figure(key, float(metrics[key]))}"
                 for key, label in shown if key in metrics]
        if self._losses:  # this epoch's mean (Lightning's epoch mean is logged only later)
            parts.insert(0, f"train loss {sum(self._losses) / len(self._losses):.4f}")
        seconds = time.perf_counter() - self._start
        self._epochs.append(seconds)
        left = sum(self._epochs) / len(self._epochs) * self._epochs_left(trainer)
        eta = f", ETA {_duration(left)}" if self._epochs_left(trainer) else ""
        self._print(trainer, f"{self._epoch(trainer)}: {', '.join(parts)} "
                             f"({seconds:.0f} s{eta})")


def progress_callbacks(console: Console, stage: str, enabled: bool, every_n_steps: int,
                       log: Console | None = None) -> list[Callback]:
    """The bar on a terminal, lines elsewhere. The lines also go to ``log`` (the run's
    train.log): through the console when it prints lines, else alone. Progress off (what batch
    jobs set) drops the bar and the step lines; each epoch's line stays, on the console and so
    in train.log: a long job's log still shows it is alive and how far it got."""
    if not enabled:
        return [ProgressLines(console, stage, None)]
    if not console.is_terminal:
        return [ProgressLines(console, stage, every_n_steps)]
    lines = [ProgressLines(log, stage, every_n_steps)] if log is not None else []
    return [ProgressBar(stage), *lines]
