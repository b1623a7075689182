"""The curves figure (the ConDSeg paper's Fig. 5): each run's validation mDSC and L_mask against
the epochs of its final stage (as the paper draws them), or against what the run spent over
every stage — cumulative training TFLOP or wall time — so that methods of different costs are
compared at every point of a budget.

The cost of an epoch is what training logged in its stage's ``metrics.csv``
(:mod:`condseg.epoch_log`): a log written before condseg recorded it has no curve on those axes,
with a note saying so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from condseg.epoch_log import SECONDS, TFLOP, read_epochs
from condseg.evaluation.compare.result import Comparison
from condseg.evaluation.names import display_name
from condseg.viz import Curve

#: The panels of the curves figure, by ``metrics.csv`` column.
CURVE_TITLES = {"val_mdsc": f"validation {display_name('dice')} (%)",
                "val_mask_loss": "validation L_mask"}
#: What ``--curves-x`` accepts: the column each cost axis adds up (epoch: none).
CURVES_X = {"epoch": None, "tflop": TFLOP, "time": SECONDS}
#: A time axis longer than this (seconds) is in hours, else in minutes.
HOURS_FROM = 3 * 3600


def check_curves_x(axis: str) -> str:
    """``axis`` if it is one of :data:`CURVES_X`; ValueError naming them otherwise."""
    if axis not in CURVES_X:
        raise ValueError(f"--curves-x {axis!r}: give one of {', '.join(CURVES_X)}")
    return axis


def run_curves(logs: Sequence[Path], keys: Sequence[str], axis: str) -> dict[str, Curve]:
    """Each of ``keys`` of a run, from the ``metrics.csv`` of its stages in training order:
    against the epochs of the last of them (``epoch``), or against the cost column of ``axis``
    summed over the epochs of every stage (each point at the cost up to its epoch's end, time in
    seconds). Raises ValueError (or OSError) saying why a log gives no such curve."""
    column = CURVES_X[check_curves_x(axis)]
    points: dict[str, tuple[list[float], list[float], list[int]]] = {
        key: ([], [], []) for key in keys}
    spent = 0.0
    for n, path in enumerate(logs if column is not None else logs[-1:]):
        if n > 0:  # a later stage: its first point
            for x, _, starts in points.values():
                starts.append(len(x))
        for epoch, row in sorted(read_epochs(path).items()):
            if column is None:
                spent = epoch
            elif row.get(column) is None:
                raise ValueError(f"{path} records no {column} for epoch {epoch} (written "
                                 "before condseg logged each epoch's cost); draw it with "
                                 "--curves-x epoch")
            else:
                spent += row[column]
            for key, (x, y, _) in points.items():
                if row.get(key) is not None:
                    x.append(spent)
                    y.append(row[key])
    return {key: Curve(tuple(x), tuple(y), tuple(starts))
            for key, (x, y, starts) in points.items() if x}


def axis_label(axis: str, longest: float) -> tuple[str, float]:
    """The x-axis label of ``axis`` and the factor its values (seconds, for time) are shown in,
    given the ``longest`` line's last value."""
    if axis == "tflop":
        return "cumulative training TFLOP (all stages)", 1.0
    if axis == "time":
        hours = longest > HOURS_FROM
        return (f"cumulative training wall time, {'hours' if hours else 'minutes'} (all stages)",
                1 / (3600 if hours else 60))
    return "epoch", 1.0


def curves_figure(
    result: Comparison, out_png: Path, axis: str = "epoch"
) -> tuple[list[Path], list[str]]:
    """curves.png/.pdf: validation mDSC and L_mask of each run against ``axis``, one line per
    run; the files written (none: nothing to draw) and the notes."""
    from condseg.viz import plot_validation_curves

    curves: dict[str, dict[str, Curve]] = {}
    notes: list[str] = []
    for entry in result.entries:
        logs = entry.run.stage_logs if entry.run is not None else []
        if not logs:
            why = "no training run" if entry.run is None else "no finished stage"
            notes.append(f"{entry.label} has no curve in curves.png: {why}")
            continue
        try:
            drawn = run_curves(logs, list(CURVE_TITLES), axis)
        except (OSError, ValueError) as exc:
            notes.append(f"{entry.label} has no curve in curves.png against {axis}: {exc}")
            continue
        if drawn:
            curves[entry.label] = drawn
        else:
            notes.append(f"{entry.label} has no curve in curves.png: its log has no validation "
                         "rows")
    if not curves:
        return [], [*notes, "curves.png not written: no input has a training log to draw"]
    longest = max(c.x[-1] for by_key in curves.values() for c in by_key.values())
    label, factor = axis_label(axis, longest)
    if factor != 1.0:
        curves = {run: {key: c._replace(x=tuple(v * factor for v in c.x))
                        for key, c in by_key.items()} for run, by_key in curves.items()}
    plot_validation_curves(curves, out_png, CURVE_TITLES, xlabel=label,
                           integer_x=axis == "epoch", pdf=True)
    if any(c.starts for by_key in curves.values() for c in by_key.values()):
        notes.append("curves.png: a dashed segment joins a stage's last epoch to the next "
                     "stage's first")
    return [out_png, out_png.with_suffix(".pdf")], notes
