"""What training hands back: each finished stage's result (also its ``result.json``, which
marks the stage as finished) and the run's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from condseg.config import StageConfig
from condseg.errors import TrainingError
from condseg.layout import RunDir, StageDir
from condseg.records import read_result, write_result


@dataclass(frozen=True)
class StageResult:
    """A finished stage: its model file and best checkpoint (paths relative to the run folder,
    so that a moved or copied run stays whole), the epochs it was given, whether it stopped
    early, the options its batch hook trained with, and its best validation metrics."""

    model_file: str
    best_checkpoint: str | None
    max_epochs: int
    stopped_early: bool
    metrics: dict[str, Any]
    batch_hook: dict[str, Any] | None = None

    def write(self, stage: StageDir) -> None:
        record: dict[str, Any] = {"model_file": self.model_file,
                                  "best_checkpoint": self.best_checkpoint,
                                  "max_epochs": self.max_epochs,
                                  "stopped_early": self.stopped_early}
        if self.batch_hook is not None:
            record["batch_hook"] = self.batch_hook
        record["metrics"] = self.metrics
        write_result(stage, record)

    @classmethod
    def read(cls, stage: StageDir) -> StageResult | None:
        """The stage's result; None while it has not finished. A result written before a key
        was recorded reads as one that may not be extended."""
        if not stage.is_finished():
            return None
        todo = ("restore it, or move it away and resume the run (--resume RUN) to finish "
                "that stage again")
        record = read_result(stage, TrainingError, todo)
        if not isinstance(record.get("model_file"), str) or not isinstance(
                record.get("metrics"), dict):
            raise TrainingError(f"{stage.result} is damaged: it has no model_file and metrics "
                                f"as training writes them; {todo}")
        return cls(model_file=record["model_file"],
                   best_checkpoint=record.get("best_checkpoint"),
                   max_epochs=record.get("max_epochs", 0),
                   stopped_early=record.get("stopped_early", True),
                   metrics=record["metrics"], batch_hook=record.get("batch_hook"))

    def extended_by(self, cfg: StageConfig) -> bool:
        """Whether the stage is to go on: it ran all its epochs (no early stop) and the
        resumed config ``cfg`` allows more."""
        return not self.stopped_early and self.max_epochs < cfg.max_epochs

    def model_path(self, stage: StageDir) -> Path:
        """The model file, found inside this run folder (a run written before paths were
        recorded relative to it, then moved, still finds its own file)."""
        recorded = Path(self.model_file)
        inside = recorded if not recorded.is_absolute() else Path(stage.name) / recorded.name
        return stage.path.parent / inside


@dataclass
class TrainResult:
    run_dir: Path
    model_files: dict[str, Path] = field(default_factory=dict)  # stage name -> model file
    best_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluation_dir: Path | None = None  # the final model's evaluation (test split, else val)

    @property
    def model_file(self) -> Path:
        """The model file of the last stage trained (the final model of the run)."""
        return list(self.model_files.values())[-1]

    def record(self, name: str, stage: StageResult) -> None:
        """Note the finished stage ``name``."""
        self.model_files[name] = stage.model_path(RunDir(self.run_dir).stage(name))
        self.best_metrics[name] = stage.metrics
