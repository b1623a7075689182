"""The comparison as an object: its inputs (entries with their evaluations), dataset columns,
paired statistics and notes, and the values every table prints, read from it alike."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from condseg.evaluation.names import MISSING, TABLE_METRICS, display_name, percent
from condseg.evaluation.stats import PairedTest
from condseg.layout import RunDir

#: Marks a precision that counts images with an empty prediction (0/0 = 1): never ranked.
EMPTY_MARK = "†"
EMPTY_NOTE = (f"{EMPTY_MARK} precision counts images with an empty prediction as 100 (0/0); "
              "such values are not ranked")
#: Under a multi-class table: what its columns mean and which metrics it cannot have.
CLASSES_NOTE = ("multi-class: mIoU, mDSC, recall and precision are means over the foreground "
                "classes (a class absent from both ground truth and prediction left out); "
                "mDSC and a class's name: that class's Dice; S-measure, E-measure and "
                "weighted F are binary only")


@dataclass
class Evaluation:
    """One evaluation folder: its protocol, summary metrics and per-image scores; or the
    evaluations of several runs on one column pooled into one (:mod:`.pool`)."""

    path: Path
    protocol: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    per_image: dict[str, dict[str, float | None]]
    column: str = ""
    classes: tuple[str, ...] | None = None  # the class names of a multi-class one
    pooled: list[Evaluation] = field(default_factory=list)  # the runs' own; empty: one run

    def empty_predictions(self) -> int:
        """Images whose prediction was empty on a non-empty mask: precision 1 by 0/0 with
        recall 0 (a prediction with any true pixel has recall > 0); of a pooled evaluation,
        those of all its runs."""
        if self.pooled:
            return sum(e.empty_predictions() for e in self.pooled)
        return sum(s.get("precision") == 1 and s.get("recall") == 0
                   for s in self.per_image.values())


@dataclass
class RunInfo:
    """What compare needs from a training run folder."""

    path: Path
    config: dict[str, Any]
    final_stage: str | None
    stages: tuple[str, ...] = ()  # every finished stage, in training order (the last is final)

    @property
    def folder(self) -> RunDir:
        return RunDir(self.path)

    @property
    def stage_logs(self) -> list[Path]:
        """Every finished stage's ``metrics.csv`` (there or not), in training order."""
        return [self.folder.stage(name).metrics for name in self.stages]


@dataclass
class Entry:
    """One input, or the inputs of one label pooled into one (:mod:`.pool`): a row of the
    table."""

    source: Path
    label: str
    evaluations: list[Evaluation]
    run: RunInfo | None = None
    pooled: list[Entry] = field(default_factory=list)  # the inputs of the row; empty: one

    @property
    def n_runs(self) -> int:
        return len(self.pooled) or 1

    def evaluation(self, column: str) -> Evaluation | None:
        return next((e for e in self.evaluations if e.column == column), None)


@dataclass
class PairedResult:
    """A later input against the reference on one dataset column."""

    label: str
    column: str
    test: PairedTest


@dataclass
class Comparison:
    """The table (rows of percent values per dataset column and metric) and the statistics."""

    entries: list[Entry]
    columns: list[str]
    stats: list[PairedResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    figure_images: list[str] = field(default_factory=list)  # the rows of predictions.png
    pooled: bool = False  # rows are runs pooled by label: values are mean ± std over runs
    # Columns the caller adds after the method (a study under a compute budget: the epochs and
    # TFLOP each method got): header -> {label: text}
    extra: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [e.label for e in self.entries]

    def extra_cells(self, label: str) -> list[str]:
        return [cells.get(label, "") for cells in self.extra.values()]

    @property
    def classes(self) -> tuple[str, ...] | None:
        """The class names of every evaluation (one set: :func:`.identity.refuse_mixed_classes`);
        None for binary."""
        return self.entries[0].evaluations[0].classes

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics of each dataset column: Table 1's four and, multi-class, each class's
        Dice (``dice/<class>``) that the evaluations recorded."""
        if self.classes is None:
            return TABLE_METRICS
        recorded = {m for e in self.entries for ev in e.evaluations for m in ev.metrics}
        return (*TABLE_METRICS, *(m for c in self.classes if (m := f"dice/{c}") in recorded))

    @property
    def reference(self) -> str:
        return self.entries[0].label

    def entry(self, label: str) -> Entry:
        entry = next((e for e in self.entries if e.label == label), None)
        if entry is None:
            raise KeyError(f"no method labelled {label!r}; the labels are {self.labels}")
        return entry

    def mean(self, label: str, column: str, metric: str) -> float | None:
        """Mean of ``metric`` as recorded (a fraction), or None when that input has none."""
        evaluation = self.entry(label).evaluation(column)
        if evaluation is None:
            return None
        mean = evaluation.metrics.get(metric, {}).get("mean")
        return None if mean is None or not math.isfinite(mean) else float(mean)

    def value(self, label: str, column: str, metric: str) -> float | None:
        """Mean of ``metric`` in percent, or None when that input has no such figure."""
        mean = self.mean(label, column, metric)
        return None if mean is None else 100 * mean

    def spread(self, label: str, column: str, metric: str) -> float | None:
        """Population std of a pooled value over its runs, in percent; None unless the value
        pools at least two runs (one run has no spread to show)."""
        evaluation = self.entry(label).evaluation(column)
        if evaluation is None or not evaluation.pooled:
            return None
        figures = evaluation.metrics.get(metric, {})
        std = figures.get("std")
        return 100 * float(std) if std is not None and figures.get("n", 0) >= 2 else None

    def empty_predictions(self, label: str, column: str) -> int:
        """Images of ``label`` on ``column`` predicted empty
        (:meth:`Evaluation.empty_predictions`)."""
        evaluation = self.entry(label).evaluation(column)
        return evaluation.empty_predictions() if evaluation is not None else 0

    def degenerate(self, label: str, column: str, metric: str) -> bool:
        """Whether the value counts 0/0 = 1 scores the method earned by predicting nothing (a
        precision with empty predictions); it is marked and never ranked best."""
        return metric == "precision" and self.empty_predictions(label, column) > 0

    def any_degenerate(self) -> bool:
        return any(self.degenerate(label, column, metric) for label in self.labels
                   for column in self.columns for metric in self.metrics)

    def table_notes(self) -> list[str]:
        """The lines under a table: the empty-prediction mark, what a multi-class one holds."""
        return ([EMPTY_NOTE] if self.any_degenerate() else []) + (
            [CLASSES_NOTE] if self.classes is not None else [])

    def text(self, label: str, column: str, metric: str, missing: str = MISSING) -> str:
        """The value as printed in the tables: two decimals, ``± std`` over the runs of a
        pooled value, marked when degenerate."""
        mean = self.mean(label, column, metric)
        if mean is None:
            return missing
        spread = self.spread(label, column, metric)
        shown = percent(mean) if spread is None else f"{percent(mean)} ± {spread:.2f}"
        return shown + (EMPTY_MARK if self.degenerate(label, column, metric) else "")

    def headers(self) -> list[str]:
        """``"<column> <metric name>"`` for every column and metric of the table."""
        return [f"{column} {display_name(metric)}"
                for column in self.columns for metric in self.metrics]

    def values(self, label: str) -> list[float | None]:
        """The row of ``label``: percent per column and metric, in the order of headers()."""
        return [self.value(label, c, m) for c in self.columns for m in self.metrics]

    def spreads(self, label: str) -> list[float | None]:
        """The std over runs of the row of ``label`` (:meth:`spread`), in the order of
        headers()."""
        return [self.spread(label, c, m) for c in self.columns for m in self.metrics]



def best_labels(result: Comparison, column: str, metric: str) -> set[str]:
    """Labels with the highest value (as printed) in a column; none when fewer than two
    methods have a value, as a single figure is best of nothing. Degenerate values
    (:meth:`Comparison.degenerate`) are shown but not ranked."""
    shown = {label: round(v, 2) for label in result.labels
             if (v := result.value(label, column, metric)) is not None}
    ranked = {label: v for label, v in shown.items()
              if not result.degenerate(label, column, metric)}
    if len(shown) < 2 or not ranked:
        return set()
    top = max(ranked.values())
    return {label for label, v in ranked.items() if v == top}


def degenerate_notes(result: Comparison) -> list[str]:
    """How many empty predictions each marked precision counts (of a pooled row: in all its
    runs)."""
    return [f"{label} on {column}: precision counts {n} image(s) with an empty prediction as "
            f"100 (0/0){' in its runs' if result.pooled else ''}; not ranked"
            for label in result.labels for column in result.columns
            if (n := result.empty_predictions(label, column))]
