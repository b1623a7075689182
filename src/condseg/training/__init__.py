"""ConDSeg training: two Lightning stages (Net_0 with Consistency Reinforcement, then ConDSeg)."""

from __future__ import annotations

from condseg.training.module import NonFiniteLossError
from condseg.training.run import TrainingError, TrainResult, train

__all__ = ["NonFiniteLossError", "TrainResult", "TrainingError", "train"]
