"""How metrics are shown to people: one display name and unit per metric, one number format.

Every table, figure and console line names a metric from here, so ``dice`` is "mDSC" and an
overlap score is a percent with two decimals wherever it is printed (the ConDSeg paper's
conventions). Values stay fractions everywhere else (files, results, checkpoints).
"""

from __future__ import annotations

#: Shown for a value that is missing (no image had one).
MISSING = "—"

#: Display name and unit of each metric of ``METRIC_NAMES``; overlap scores are shown in %.
DISPLAY: dict[str, tuple[str, str]] = {
    "iou": ("mIoU", "%"),
    "dice": ("mDSC", "%"),
    "recall": ("Recall", "%"),
    "precision": ("Precision", "%"),
    "specificity": ("Specificity", "%"),
    "accuracy": ("Accuracy", "%"),
    "f2": ("F2", "%"),
    "mae": ("MAE", ""),
    "s_measure": ("S-measure", ""),
    "e_measure_mean": ("E-measure (mean)", ""),
    "e_measure_max": ("E-measure (max)", ""),
    "e_measure_adaptive": ("E-measure (adaptive)", ""),
    "weighted_f": ("weighted F", ""),
    "hd95": ("HD95", "px"),
    "assd": ("ASSD", "px"),
}

#: The four columns per dataset of the ConDSeg paper's Table 1.
TABLE_METRICS: tuple[str, ...] = ("iou", "dice", "recall", "precision")


def display_name(metric: str) -> str:
    """The display name of ``metric`` (e.g. ``dice`` -> ``mDSC``, a class's ``dice/rnfl`` ->
    ``mDSC rnfl``); unknown names as written."""
    base, _, name = metric.partition("/")
    shown = DISPLAY.get(base, (base, ""))[0]
    return f"{shown} {name}" if name else shown


def unit(metric: str) -> str:
    """``%``, ``px`` or empty (a class's ``dice/rnfl``: that of ``dice``)."""
    return DISPLAY.get(metric.partition("/")[0], (metric, ""))[1]


def percent(value: float | None, missing: str = MISSING) -> str:
    """A fraction in percent with two decimals (``0.8123`` -> ``81.23``), the one way an
    overlap score is printed."""
    return missing if value is None else f"{100 * value:.2f}"


def formatted(metric: str, value: float | None) -> str:
    """``value`` of ``metric`` in its unit: percent for overlap scores, two decimals for
    pixel distances, four for the scores in [0, 1]."""
    if value is None:
        return MISSING
    kind = unit(metric)
    if kind == "%":
        return percent(value)
    return f"{value:.2f}" if kind == "px" else f"{value:.4f}"
