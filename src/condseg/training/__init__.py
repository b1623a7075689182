"""Training: one generic Lightning module and the runner of a method's stages."""

from __future__ import annotations

from condseg.errors import NonFiniteLossError, TrainingError
from condseg.training.results import TrainResult
from condseg.training.run import train

__all__ = ["NonFiniteLossError", "TrainResult", "TrainingError", "train"]
