"""Confusion-matrix scores per image — the one definition of IoU, Dice, recall, precision, ...
that training's validation and the evaluation protocol share.

A ratio whose denominator is zero scores 1: no error of the kind it measures was possible (see
``metrics.py`` for the conventions).
"""

from __future__ import annotations

import torch
from torch import Tensor

OVERLAP_NAMES = ("iou", "dice", "recall", "precision", "specificity", "accuracy", "f2")


def overlap_scores(pred: Tensor, gt: Tensor) -> dict[str, Tensor]:
    """Scores per image (float64, shape (B,)) of boolean predictions and masks (B, ...)."""
    pred, gt = pred.flatten(1).bool(), gt.flatten(1).bool()
    tp = (pred & gt).sum(1, dtype=torch.float64)
    fp = (pred & ~gt).sum(1, dtype=torch.float64)
    fn = (~pred & gt).sum(1, dtype=torch.float64)
    tn = pred.shape[1] - tp - fp - fn
    return {
        "iou": _ratio(tp, tp + fp + fn),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "recall": _ratio(tp, tp + fn),
        "precision": _ratio(tp, tp + fp),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": (tp + tn) / pred.shape[1],
        "f2": _ratio(5 * tp, 5 * tp + 4 * fn + fp),
    }


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den == 0, torch.ones_like(num), num / den.clamp_min(1))
