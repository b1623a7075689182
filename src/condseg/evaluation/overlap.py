"""Confusion-matrix scores per image — the one definition of IoU, Dice, recall, precision, ...
that training's validation and the evaluation protocol share.

A ratio whose denominator is zero scores 1: no error of the kind it measures was possible (see
``metrics.py`` for the conventions). With K >= 2 classes (:func:`class_scores`), a foreground
class absent from both the ground truth and the prediction of an image has no score there
(NaN: missing), and pixels whose ground truth is ``IGNORE_ID`` count for nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from condseg.data.labels import IGNORE_ID

OVERLAP_NAMES = ("iou", "dice", "recall", "precision", "specificity", "accuracy", "f2")
#: The scores :func:`class_scores` gives per foreground class.
CLASS_OVERLAP_NAMES = ("iou", "dice", "recall", "precision")


def overlap_scores(pred: Tensor, gt: Tensor) -> dict[str, Tensor]:
    """Scores per image (float64, shape (B,)) of boolean predictions and masks (B, ...)."""
    pred, gt = pred.flatten(1).bool(), gt.flatten(1).bool()
    tp = (pred & gt).sum(1, dtype=torch.float64)
    fp = (pred & ~gt).sum(1, dtype=torch.float64)
    fn = (~pred & gt).sum(1, dtype=torch.float64)
    tn = pred.shape[1] - tp - fp - fn
    return {
        **_ratios(tp, fp, fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": (tp + tn) / pred.shape[1],
        "f2": _ratio(5 * tp, 5 * tp + 4 * fn + fp),
    }


def class_confusion(pred: Tensor, gt: Tensor, num_classes: int) -> Tensor:
    """Confusion matrices (B, K, K) int64 — rows the ground truth's class, columns the
    prediction's — of class-id maps (B, ...): one bincount for the whole batch. Pixels whose
    ground truth is ``IGNORE_ID`` are left out; any other id outside 0..K-1 is a bug."""
    pred, gt = pred.flatten(1).long(), gt.flatten(1).long()
    kept = gt != IGNORE_ID
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted class ids must lie in 0..{num_classes - 1}; got "
                         f"{pred.min().item()}..{pred.max().item()}")
    if ((gt[kept] < 0) | (gt[kept] >= num_classes)).any():
        raise ValueError(f"ground-truth class ids must lie in 0..{num_classes - 1} or be "
                         f"{IGNORE_ID} (ignored); got {torch.unique(gt[kept]).tolist()[:8]}")
    batch = torch.arange(pred.shape[0], device=pred.device).unsqueeze(1).expand_as(pred)
    index = (batch * num_classes + gt) * num_classes + pred
    counts = torch.bincount(index[kept], minlength=pred.shape[0] * num_classes**2)
    return counts.view(pred.shape[0], num_classes, num_classes)


def class_scores(confusion: Tensor) -> dict[str, Tensor]:
    """From :func:`class_confusion`: each of CLASS_OVERLAP_NAMES per image and foreground class
    (float64, (B, K-1); NaN where the class is in neither the truth nor the prediction) by
    :func:`overlap_scores`' rule, and ``accuracy`` (B,): the pixel accuracy over the pixels
    not ignored (NaN for an image whose every pixel is ignored)."""
    confusion = confusion.to(torch.float64)
    tp = confusion.diagonal(dim1=1, dim2=2)
    fp = confusion.sum(1) - tp
    fn = confusion.sum(2) - tp
    absent = (tp + fp + fn == 0)[:, 1:]
    scores = {name: score[:, 1:].masked_fill(absent, torch.nan)
              for name, score in _ratios(tp, fp, fn).items()}
    kept = confusion.sum((1, 2))
    scores["accuracy"] = torch.where(kept == 0, torch.nan, tp.sum(1) / kept.clamp_min(1))
    return scores


def _ratios(tp: Tensor, fp: Tensor, fn: Tensor) -> dict[str, Tensor]:
    return {
        "iou": _ratio(tp, tp + fp + fn),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "recall": _ratio(tp, tp + fn),
        "precision": _ratio(tp, tp + fp),
    }


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den == 0, torch.ones_like(num), num / den.clamp_min(1))
