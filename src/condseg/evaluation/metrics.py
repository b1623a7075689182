"""Per-image segmentation metrics (DESIGN.md §7) and their dataset summary.

Dataset figures are means of per-image values (mIoU, mDSC, ...), as the ConDSeg paper reports
them, so every metric here is computed for one image at a time.

Conventions
-----------
* Overlap metrics use the prediction thresholded at ``prob >= threshold`` (0.5). A ratio whose
  denominator is zero scores 1: no error of the kind it measures was possible. So an empty
  prediction on an empty ground truth scores 1 for iou, dice, recall, precision and f2; an empty
  ground truth with a non-empty prediction has recall 1 (nothing to find) but precision, iou,
  dice and f2 0; a non-empty ground truth with an empty prediction has precision 1 (nothing
  claimed) but recall, iou, dice and f2 0. Specificity follows the same rule for an
  all-foreground ground truth. These are the values the ε-smoothed formulas
  ``(x + ε)/(y + ε)`` of the usual polyp evaluation scripts give.
* MAE, S-measure, E-measure (mean, max and adaptive over pysodmetrics' 256 thresholds) and
  weighted F-measure come from pysodmetrics, fed as the polyp literature does: the probability
  map saved as 8-bit grey (``round(255·p)``) and the mask as 0/255, then min-max normalised by
  pysodmetrics (MATLAB ``mapminmax``). Per image, max-E is the maximum of that image's curve; the
  dataset value is the mean of these (the SOD toolboxes instead take the max of the mean curve).
  pysodmetrics' own conventions are kept: weighted F of an empty ground truth is 0, E-measure
  divides by N − 1 for N pixels (so it can reach N/(N − 1): 1.33 on a 2×2 image, 1.0001 on a
  100×100 one), and the adaptive E-measure of an all-zero prediction thresholds at 0 (so it is 0
  on an empty ground truth). A NaN from it is missing, and so are the three E-measures of a
  one-pixel image, where N − 1 = 0 (pysodmetrics would divide by its ε and give ~1e15).
* HD95 and ASSD are in pixels, from monai on the thresholded masks (surface = mask minus its
  erosion; ASSD is the mean of all distances in both directions). They are None (missing) when
  either mask is empty, where they are undefined; `summarize` counts them as missing.

K >= 2 classes (:func:`class_image_metrics`)
------------------------------------------
* The prediction is the argmax class id of each pixel, the ground truth the class ids of the
  mask (background 0, then 1..K-1); pixels whose ground truth is ``IGNORE_ID`` (255) count for
  nothing: they are left out of every count, and a prediction there is no surface for the
  distances (the prediction's mask of a class is cut to the pixels not ignored).
* Per foreground class ``c`` (``dice/<c>``, ``iou/<c>``, ``recall/<c>``, ``precision/<c>``,
  ``hd95/<c>``, ``assd/<c>``) the binary conventions above hold for the class against the rest,
  with one exception: **a class absent from both the ground truth and the prediction of an
  image is missing there (None), not 1** — there was nothing to score, and a 1 would lift the
  mean for every class an image happens not to show. (A class in only one of them keeps the
  binary rule: e.g. predicted but absent from the truth: recall 1, precision, IoU, Dice 0.)
* ``dice``, ``iou``, ``recall``, ``precision``, ``hd95``, ``assd`` are the mean over the
  foreground classes of the image's per-class values that are not missing (None when all are).
* ``accuracy`` is the pixel accuracy over the pixels not ignored (the "AC" of the PDCR paper's
  tables; background included), missing when every pixel is ignored.
* Sα, Eφ, Fβw, MAE, specificity and F2 are binary-only: a K-class row has none of them.
* One bincount confusion matrix per image gives the overlap scores (``overlap.py``); only the
  distances go class by class.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import py_sod_metrics as sod
import torch
from monai.metrics.utils import get_edge_surface_distance

from condseg.data.labels import IGNORE_ID
from condseg.evaluation.overlap import (
    CLASS_OVERLAP_NAMES,
    class_confusion,
    class_scores,
    overlap_scores,
)

__all__ = ["CLASS_METRICS", "METRIC_NAMES", "class_image_metrics", "class_metric_names",
           "image_metrics", "summarize"]

METRIC_NAMES: tuple[str, ...] = (
    "iou",
    "dice",
    "recall",
    "precision",
    "specificity",
    "accuracy",
    "f2",
    "mae",
    "s_measure",
    "e_measure_mean",
    "e_measure_max",
    "e_measure_adaptive",
    "weighted_f",
    "hd95",
    "assd",
)

#: The metrics of a K-class evaluation given per foreground class (and as their mean).
CLASS_METRICS: tuple[str, ...] = (*CLASS_OVERLAP_NAMES, "hd95", "assd")


def _check(prob: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prob = np.asarray(prob)
    gt = np.asarray(gt)
    if prob.ndim != 2 or prob.shape != gt.shape:
        raise ValueError(
            f"prob and gt must be 2-D arrays of the same shape; got {prob.shape} and {gt.shape}"
        )
    if not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(f"prob must be a float probability map in [0, 1]; got dtype {prob.dtype}")
    if not np.all(np.isfinite(prob)) or prob.min() < 0 or prob.max() > 1:
        raise ValueError(
            "prob must be finite and in [0, 1] (apply the sigmoid to logits first); got range "
            f"[{prob.min()}, {prob.max()}]"
        )
    if gt.dtype != bool:
        if not np.isin(gt, (0, 1)).all():
            raise ValueError(
                "gt must be a boolean mask (or 0/1); got values "
                f"{np.unique(gt)[:5].tolist()}... — binarise the mask first"
            )
        gt = gt.astype(bool)
    return prob, gt


def _confusion(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    scores = overlap_scores(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None])
    return {name: float(value[0]) for name, value in scores.items()}


def _sod(prob: np.ndarray, gt: np.ndarray) -> dict[str, float | None]:
    """pysodmetrics on one image; fresh evaluators so each value is that image's alone.

    A NaN (S-measure's quadrant split can leave an empty quadrant when the foreground centroid
    lies on the last row or column) is reported as missing rather than poisoning the mean, as
    are the E-measures of a one-pixel image (see the module docstring).
    """
    pred8 = np.round(prob * 255).astype(np.uint8)
    gt8 = gt.astype(np.uint8) * 255
    mae, sm, em, wfm = sod.MAE(), sod.Smeasure(), sod.Emeasure(), sod.WeightedFmeasure()
    with warnings.catch_warnings():  # the NaN case above also warns "mean of empty slice"
        warnings.simplefilter("ignore", RuntimeWarning)
        for evaluator in (mae, sm, em, wfm):
            evaluator.step(pred8, gt8)
    curve = em.get_results()["em"]["curve"]
    values = {
        "mae": mae.get_results()["mae"],
        "s_measure": sm.get_results()["sm"],
        "e_measure_mean": curve.mean(),
        "e_measure_max": curve.max(),
        "e_measure_adaptive": em.get_results()["em"]["adp"],
        "weighted_f": wfm.get_results()["wfm"],
    }
    if prob.size < 2:
        values.update(e_measure_mean=np.nan, e_measure_max=np.nan, e_measure_adaptive=np.nan)
    return {k: float(v) if np.isfinite(v) else None for k, v in values.items()}


def _distances(pred: np.ndarray, gt: np.ndarray) -> dict[str, float | None]:
    """HD95 and ASSD as monai's compute_hausdorff_distance(percentile=95) and
    compute_average_surface_distance(symmetric=True) define them, from one edge extraction
    (the tests check the agreement); the two public calls would extract the edges twice."""
    if not pred.any() or not gt.any():
        return {"hd95": None, "assd": None}
    with warnings.catch_warnings():  # monai 1.5+ warns about its own deprecated argument
        warnings.filterwarnings("ignore", ".*always_return_as_numpy", FutureWarning)
        _, (to_gt, to_pred), _ = get_edge_surface_distance(
            torch.from_numpy(pred), torch.from_numpy(gt), symmetric=True
        )
    hd95 = max(torch.quantile(d, 0.95).item() for d in (to_gt, to_pred))
    return {"hd95": float(hd95), "assd": float(torch.cat((to_gt, to_pred)).mean().item())}


def image_metrics(
    prob: np.ndarray, gt: np.ndarray, threshold: float = 0.5
) -> dict[str, float | None]:
    """All metrics of METRIC_NAMES for one image.

    `prob` is the float (H, W) foreground probability in [0, 1]; `gt` the (H, W) boolean mask.
    Values are floats; hd95/assd are None when either the thresholded prediction or gt is empty.
    """
    prob, gt = _check(prob, gt)
    pred = prob >= threshold
    row: dict[str, float | None] = {**_confusion(pred, gt), **_sod(prob, gt)}
    row.update(_distances(pred, gt))
    return {name: row[name] for name in METRIC_NAMES}


def class_metric_names(classes: Sequence[str]) -> tuple[str, ...]:
    """The columns of a K-class evaluation of ``classes`` (background first): the foreground
    means and ``accuracy`` in METRIC_NAMES' order, then ``<metric>/<class>`` per metric of
    CLASS_METRICS and foreground class in id order."""
    means = tuple(name for name in METRIC_NAMES if name in CLASS_METRICS or name == "accuracy")
    return (*means, *(f"{metric}/{name}" for metric in CLASS_METRICS for name in classes[1:]))


def class_image_metrics(
    pred: np.ndarray, gt: np.ndarray, classes: Sequence[str]
) -> dict[str, float | None]:
    """All metrics of :func:`class_metric_names` for one image (rules: the module docstring).

    ``pred`` is the (H, W) predicted class id (the argmax) in 0..K-1, ``gt`` the (H, W) class
    ids of the mask with ``IGNORE_ID`` for ignored pixels; K = ``len(classes)`` >= 2.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.ndim != 2 or pred.shape != gt.shape or len(classes) < 2:
        raise ValueError(f"pred and gt must be 2-D class-id maps of the same shape, with two or "
                         f"more classes; got {pred.shape}, {gt.shape} and {len(classes)} classes")
    confusion = class_confusion(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None],
                                len(classes))
    scores = {name: value[0].tolist() for name, value in class_scores(confusion).items()}
    per_class = {name: [_value(v) for v in scores[name]] for name in CLASS_OVERLAP_NAMES}
    kept = gt != IGNORE_ID
    distances = [_distances((pred == c) & kept, gt == c) for c in range(1, len(classes))]
    per_class.update({name: [d[name] for d in distances] for name in ("hd95", "assd")})
    row: dict[str, float | None] = {"accuracy": _value(scores["accuracy"])}
    for metric in CLASS_METRICS:
        present = [v for v in per_class[metric] if v is not None]
        row[metric] = float(np.mean(present)) if present else None
        row.update({f"{metric}/{name}": v
                    for name, v in zip(classes[1:], per_class[metric], strict=True)})
    return {name: row[name] for name in class_metric_names(classes)}


def _value(score: float) -> float | None:
    return None if np.isnan(score) else float(score)


def summarize(
    rows: Iterable[Mapping[str, object]], names: Sequence[str] = METRIC_NAMES
) -> dict[str, dict[str, float | int | None]]:
    """Per metric of ``names`` (METRIC_NAMES; a K-class evaluation's: :func:`class_metric_names`):
    mean, std (population, ddof 0), n (values) and missing (None).

    Other keys of the rows (image name, ...) are ignored. A metric with no values has mean and
    std None, so a summary never hides missing distances behind a 0 or an infinity.
    """
    rows = list(rows)
    summary: dict[str, dict[str, float | int | None]] = {}
    for name in names:
        raw = [row.get(name) for row in rows]
        values = np.array([v for v in raw if v is not None], dtype=np.float64)
        present = values.size > 0
        summary[name] = {
            "mean": float(values.mean()) if present else None,
            "std": float(values.std()) if present else None,
            "n": int(values.size),
            "missing": len(raw) - int(values.size),
        }
    return summary
