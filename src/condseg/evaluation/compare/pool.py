"""Pooling runs of one method into one row (``compare --pool``), the one place it happens.

A study trains each method with several seeds or on k folds; a row per run would bury the
comparison of methods in the spread of their runs. Inputs of one label become one entry whose
evaluation of each column pools the runs evaluated there: its summary metrics are the mean and
population std (ddof 0, like every summary) over the runs' own means, and its per-image scores
the mean over the runs that scored that image (every seed on a shared split; on a fold column,
the runs whose validation fold holds it). The tables and the paired statistics then read a
pooled entry like any other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from condseg.evaluation.compare.result import Entry, Evaluation
from condseg.evaluation.metrics import summarize


def runs_of(entries: Sequence[Entry]) -> list[Entry]:
    """The runs to pool: an input read as runs already pooled (an nnU-Net trainer folder's
    folds: :mod:`.nnunet`) gives them, under its label; other inputs are one run each."""
    runs = []
    for entry in entries:
        for run in entry.pooled or [entry]:
            run.label = entry.label
            runs.append(run)
    return runs


def pool_entries(entries: Sequence[Entry]) -> list[Entry]:
    """One entry per label, in order of first appearance, pooling the inputs of that label."""
    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.label, []).append(entry)
    return [pooled_entry(label, runs) for label, runs in groups.items()]


def pooled_entry(label: str, runs: Sequence[Entry]) -> Entry:
    """The row of ``runs``: each column they were evaluated on pooled over the runs that were;
    its source and training run (what the figures draw) are the first run's."""
    columns = dict.fromkeys(e.column for run in runs for e in run.evaluations)
    evaluations = [pooled_evaluation([e for run in runs if (e := run.evaluation(c)) is not None])
                   for c in columns]
    first = runs[0]
    return Entry(source=first.source, label=label, evaluations=evaluations, run=first.run,
                 pooled=list(runs))


def pooled_evaluation(runs: Sequence[Evaluation]) -> Evaluation:
    """Mean ± std over ``runs`` of each run's mean metric; per image, the mean over the runs
    that scored it. Path and protocol (data root, model file) are the first run's."""
    run_means = [{metric: _finite(figures.get("mean")) for metric, figures in e.metrics.items()}
                 for e in runs]
    metrics = dict.fromkeys(m for means in run_means for m in means)  # the evaluations' own
    names = dict.fromkeys(name for e in runs for name in e.per_image)
    per_image = {name: _means([e.per_image[name] for e in runs if name in e.per_image])
                 for name in names}
    first = runs[0]
    return Evaluation(path=first.path, protocol=first.protocol,
                      metrics=summarize(run_means, metrics), per_image=per_image,
                      column=first.column, classes=first.classes, pooled=list(runs))


def _means(rows: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    """The mean of each metric over ``rows`` that have it (None where none has)."""
    names = dict.fromkeys(metric for row in rows for metric in row)
    return {metric: figures["mean"] for metric, figures in summarize(rows, names).items()}


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def pool_notes(entries: Sequence[Entry]) -> list[str]:
    """How many runs each row pools when the rows differ in it, and every column of a row
    that some of its runs were not evaluated on."""
    notes = []
    if len({entry.n_runs for entry in entries}) > 1:
        counts = ", ".join(f"{entry.label} {entry.n_runs}" for entry in entries)
        notes.append(f"the rows pool different numbers of runs: {counts}")
    for entry in entries:
        for evaluation in entry.evaluations:
            missing = [str(run.source) for run in entry.pooled
                       if run.evaluation(evaluation.column) is None]
            if missing:
                notes.append(f"{entry.label} on {evaluation.column}: pooled over "
                             f"{len(evaluation.pooled)} of its {entry.n_runs} runs; "
                             f"{', '.join(missing)} not evaluated on it")
    return notes
