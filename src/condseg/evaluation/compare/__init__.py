"""``condseg compare``: several methods side by side, in the layout of the ConDSeg paper's Table 1.

Inputs are training run folders (``config.yaml``; their evaluations are ``RUN/evaluation/*/``:
training writes the test split's, or the validation split's when the dataset has no test split)
or evaluation folders (``summary.json`` + ``per_image.csv`` from ``condseg evaluate --out``), or
nnU-Net v2 trainer and fold folders (:mod:`.nnunet`).
Each input is a row (or, with ``pool``, the runs of one method are one row: :mod:`.pool`); each
dataset (data root name / split) contributes mIoU, mDSC, recall and precision in percent. The
first row is the reference: every later row evaluated on the same images gets a paired
Wilcoxon test and a bootstrap interval of its per-image Dice gain. Multi-class evaluations
(their summary names the ``classes``) add each class's Dice to every dataset; their Dice, IoU,
recall and precision are means over the foreground classes, so the paired tests are on the
per-image foreground-mean Dice. Evaluations of different classes are not compared.

The package reads the inputs (:mod:`.inputs`) into the comparison object (:mod:`.result`),
keeps apart what is not comparable and refuses what would count twice (:mod:`.identity`: by
the dataset, protocol and model each evaluation recorded), pools runs when asked
(:mod:`.pool`), adds the paired statistics (:mod:`.statistics`), and shows it as tables
(:mod:`.tables`) and figures (:mod:`.figures`, :mod:`.curves`); :func:`compare` does all of it
in that order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console

from condseg.errors import CompareError, refuse_existing
from condseg.evaluation.compare.curves import CURVES_X, check_curves_x
from condseg.evaluation.compare.figures import (
    FIGURE_FILES,
    ImageChoice,
    evenly_spaced,
    figure_images,
    parse_images,
    write_figures,
)
from condseg.evaluation.compare.identity import (
    identical_notes,
    protocol_notes,
    refuse_duplicates,
    refuse_mixed_classes,
    unrecorded_notes,
)
from condseg.evaluation.compare.inputs import (
    assign_columns,
    assign_labels,
    read_input,
    read_run,
    stage_names,
    validation_notes,
)
from condseg.evaluation.compare.pool import pool_entries, pool_notes, runs_of
from condseg.evaluation.compare.result import (
    Comparison,
    best_labels,
    degenerate_notes,
)
from condseg.evaluation.compare.statistics import paired_statistics
from condseg.evaluation.compare.tables import (
    OUTPUT_FILES,
    latex_escape,
    print_notes,
    print_tables,
    write_tables,
)

__all__ = [
    "CURVES_X", "CompareError", "Comparison", "ImageChoice", "best_labels", "compare",
    "evenly_spaced", "figure_images", "latex_escape", "parse_images", "read_run", "stage_names",
]


def compare(
    inputs: Sequence[Path],
    labels: Sequence[str] | None = None,
    out_dir: Path | None = None,
    figure_dir: Path | None = None,
    images: int | str | Sequence[str] = 4,
    overwrite: bool = False,
    console: Console | None = None,
    pool: bool = False,
    extra: Mapping[str, Mapping[str, str]] | None = None,
    curves_x: str = "epoch",
) -> Comparison:
    """Build the comparison of ``inputs`` (the first is the reference), write the tables to
    ``out_dir`` and the figures to ``figure_dir`` when given, and print to ``console``.
    ``images`` chooses the rows of predictions.png (:func:`parse_images`). With ``pool``, the
    inputs of one label (``labels`` may repeat; else the method) form one row, the mean ± std
    over them (:mod:`.pool`). ``extra`` adds columns after the method ({header: {label:
    text}}), such as the epochs and TFLOP each method got under a compute budget.
    ``curves_x`` is the x-axis of curves.png: ``epoch`` (the final stage's), ``tflop`` or
    ``time`` (what each run spent, over all its stages: :mod:`.curves`).

    Existing output files are refused (FileExistsError) unless ``overwrite``, and images that
    are not there are refused, before anything is written or any model is loaded.
    """
    if not inputs:
        raise CompareError("give at least one run or evaluation folder to compare")
    choice = parse_images(images)
    try:
        check_curves_x(curves_x)
    except ValueError as exc:
        raise CompareError(str(exc)) from None
    planned = [Path(out_dir) / n for n in OUTPUT_FILES] if out_dir is not None else []
    planned += [Path(figure_dir) / n for n in FIGURE_FILES] if figure_dir is not None else []
    refuse_existing(planned, overwrite)

    entries = [read_input(Path(p)) for p in inputs]
    refuse_duplicates(entries)
    refuse_mixed_classes(entries)
    assign_labels(entries, labels, pool)
    if pool:
        entries = runs_of(entries)
    columns, notes = assign_columns(entries, pool)
    notes += [*validation_notes(entries, columns), *protocol_notes(entries, columns),
              *unrecorded_notes(entries, columns), *identical_notes(entries, columns)]
    if pool:
        entries = pool_entries(entries)
        notes += pool_notes(entries)
    stats, stat_notes = paired_statistics(entries)
    result = Comparison(entries=entries, columns=columns, stats=stats,
                        notes=[*notes, *stat_notes], pooled=pool,
                        extra={h: dict(cells) for h, cells in (extra or {}).items()})
    result.notes += degenerate_notes(result)
    chosen = figure_images(result, choice) if figure_dir is not None else None
    if out_dir is not None:
        result.written += write_tables(result, Path(out_dir))
    if console is not None:  # before the figures, which load and run every model
        print_tables(result, console)
    if figure_dir is not None and chosen is not None:
        written, figure_notes = write_figures(result, Path(figure_dir), chosen, curves_x)
        result.written += written
        result.notes += figure_notes
    if console is not None:
        print_notes(result, console)
    return result
