"""Training: one generic Lightning module and the runner of a method's stages."""

from __future__ import annotations

from condseg.training.module import NonFiniteLossError
from condseg.training.run import TrainingError, TrainResult, train

__all__ = ["NonFiniteLossError", "TrainResult", "TrainingError", "train"]
