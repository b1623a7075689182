"""``condseg compare``: several methods side by side, in the layout of the ConDSeg paper's Table 1.

Inputs are training run folders (``config.yaml``; their evaluations are ``RUN/evaluation/*/``:
training writes the test split's, or the validation split's when the dataset has no test split)
or evaluation folders (``summary.json`` + ``per_image.csv`` from ``condseg evaluate --out``).
Each input is a row; each dataset (data root name / split) contributes mIoU, mDSC, recall and
precision in percent. The first input is the reference: every later input evaluated on the
same images gets a paired Wilcoxon test and a bootstrap interval of its per-image Dice gain.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from condseg.config import ConfigError, read_yaml
from condseg.errors import CondsegError, InputNotFoundError, OutputExistsError
from condseg.evaluation.stats import PairedTest, paired_test

SUMMARY_JSON = "summary.json"
PER_IMAGE_CSV = "per_image.csv"
CONFIG_YAML = "config.yaml"
TABLE_METRICS: dict[str, str] = {
    "iou": "mIoU", "dice": "mDSC", "recall": "Recall", "precision": "Precision",
}
OUTPUT_FILES = ("compare.md", "compare.csv", "compare.tex", "stats.csv")
FIGURE_FILES = ("predictions.png", "predictions.pdf", "curves.png", "curves.pdf")
MISSING = "—"
#: Marks a precision that counts images with an empty prediction (0/0 = 1): never ranked.
EMPTY_MARK = "†"
EMPTY_NOTE = (f"{EMPTY_MARK} precision counts images with an empty prediction as 100 (0/0); "
              "such values are not ranked")
FigureResult = tuple[list[Path], list[str]]  # the files written (none: skipped) and notes


class CompareError(CondsegError, ValueError):
    """An input folder that cannot be compared (the message names it and what to do)."""


@dataclass
class Evaluation:
    """One evaluation folder: its protocol, summary metrics and per-image scores."""

    path: Path
    protocol: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    per_image: dict[str, dict[str, float | None]]
    column: str = ""


@dataclass
class RunInfo:
    """What compare needs from a training run folder."""

    path: Path
    config: dict[str, Any]
    final_stage: str | None

    @property
    def metrics_csv(self) -> Path | None:
        """The final stage's Lightning log, if the run has a finished stage with one."""
        if self.final_stage is None:
            return None
        path = self.path / self.final_stage / "metrics.csv"
        return path if path.is_file() else None


@dataclass
class Entry:
    """One input: a row of the table."""

    source: Path
    label: str
    evaluations: list[Evaluation]
    run: RunInfo | None = None

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

    @property
    def labels(self) -> list[str]:
        return [e.label for e in self.entries]

    @property
    def reference(self) -> str:
        return self.entries[0].label

    def entry(self, label: str) -> Entry:
        entry = next((e for e in self.entries if e.label == label), None)
        if entry is None:
            raise KeyError(f"no method labelled {label!r}; the labels are {self.labels}")
        return entry

    def value(self, label: str, column: str, metric: str) -> float | None:
        """Mean of ``metric`` in percent, or None when that input has no such figure."""
        evaluation = self.entry(label).evaluation(column)
        if evaluation is None:
            return None
        mean = evaluation.metrics.get(metric, {}).get("mean")
        return None if mean is None or not math.isfinite(mean) else 100 * float(mean)

    def empty_predictions(self, label: str, column: str) -> int:
        """Images of ``label`` on ``column`` whose prediction was empty on a non-empty mask:
        precision 1 by 0/0 with recall 0 (a prediction with any true pixel has recall > 0)."""
        evaluation = self.entry(label).evaluation(column)
        scores = evaluation.per_image.values() if evaluation is not None else ()
        return sum(s.get("precision") == 1 and s.get("recall") == 0 for s in scores)

    def degenerate(self, label: str, column: str, metric: str) -> bool:
        """Whether the value counts 0/0 = 1 scores the method earned by predicting nothing (a
        precision with empty predictions); it is marked and never ranked best."""
        return metric == "precision" and self.empty_predictions(label, column) > 0

    def text(self, label: str, column: str, metric: str, missing: str = MISSING) -> str:
        """The value as printed in the tables: two decimals, marked when degenerate."""
        value = self.value(label, column, metric)
        if value is None:
            return missing
        return f"{value:.2f}" + (EMPTY_MARK if self.degenerate(label, column, metric) else "")

    def rows(self) -> list[dict[str, Any]]:
        """One dict per method: ``method`` plus ``"<column> <metric label>"`` -> percent."""
        rows = []
        for label in self.labels:
            row: dict[str, Any] = {"method": label}
            for column in self.columns:
                for metric, name in TABLE_METRICS.items():
                    row[f"{column} {name}"] = self.value(label, column, metric)
            rows.append(row)
        return rows


# --------------------------------------------------------------------------- reading inputs


def read_evaluation(path: Path) -> Evaluation:
    """Read ``summary.json`` and ``per_image.csv`` of an evaluation folder."""
    summary_path, csv_path = path / SUMMARY_JSON, path / PER_IMAGE_CSV
    if not csv_path.is_file():
        raise InputNotFoundError(
            f"{csv_path} not found; rerun `condseg evaluate ... --out {path}` to write it"
        )
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not text
        raise CompareError(
            f"cannot read {summary_path}: {_one_line(exc)}; rerun condseg evaluate"
        ) from exc
    if not isinstance(summary, dict) or not isinstance(summary.get("metrics"), dict):
        raise CompareError(f"{summary_path} has no 'metrics'; it was not written by evaluate")
    return Evaluation(path=path, protocol=dict(summary.get("protocol") or {}),
                      metrics=summary["metrics"], per_image=read_per_image(csv_path))


def read_per_image(path: Path) -> dict[str, dict[str, float | None]]:
    """{image name: {metric: value or None}} from a per-image CSV (empty cell = missing)."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "name" not in reader.fieldnames:
                raise CompareError(f"{path} has no 'name' column; it was not written by evaluate")
            return {
                row["name"]: {k: _float(v) for k, v in row.items() if k != "name" and k}
                for row in reader
            }
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CompareError(f"cannot read {path}: {_one_line(exc)}; rerun condseg evaluate") from exc


def _one_line(error: Exception) -> str:
    """Parser messages (YAML's especially) span lines; errors are printed as one."""
    return " ".join(str(error).split())


def _float(cell: str | None) -> float | None:
    if cell is None or not cell.strip():
        return None
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_run(path: Path) -> RunInfo:
    """The run's configuration and its final stage: the last stage with a ``result.json``."""
    config_path = path / CONFIG_YAML
    try:
        config = read_yaml(config_path.read_text(), config_path.name) or {}
    except (OSError, UnicodeDecodeError, ConfigError) as exc:
        raise CompareError(f"cannot read {config_path}: {_one_line(exc)}") from exc
    if not isinstance(config, dict):
        raise CompareError(f"{config_path} is not a mapping; it was not written by training")
    finished = [s for s in stage_names(path, config) if (path / s / "result.json").is_file()]
    return RunInfo(path=path, config=config, final_stage=finished[-1] if finished else None)


def stage_names(run_dir: Path, config: Mapping[str, Any]) -> list[str]:
    """Stage folder names in training order: the keys of ``stages`` (a list of stage numbers
    means folders ``stageN``); without ``stages``, the run's sub-folders holding a log."""
    stages = config.get("stages")
    if isinstance(stages, Mapping):
        return [str(name) for name in stages]
    if isinstance(stages, list):
        names = [str(s) for s in stages]
        return [n if (run_dir / n).is_dir() else f"stage{n}" for n in names]
    return sorted(
        p.name for p in run_dir.iterdir()
        if p.is_dir() and ((p / "metrics.csv").is_file() or (p / "result.json").is_file())
    )


def run_of_evaluation(path: Path) -> Path | None:
    """The run folder an evaluation folder belongs to (``RUN/evaluation/<split>``), if any."""
    run = path.parent.parent
    if path.parent.name == "evaluation" and (run / CONFIG_YAML).is_file():
        return run
    return None


def read_input(path: Path) -> Entry:
    """An input folder as an unlabelled entry; a run contributes all its evaluations."""
    path = Path(path)
    if not path.is_dir():
        raise InputNotFoundError(
            f"{path} not found; give run folders (with {CONFIG_YAML}) or evaluation folders "
            f"(with {SUMMARY_JSON} and {PER_IMAGE_CSV})"
        )
    if (path / SUMMARY_JSON).is_file():
        run_dir = run_of_evaluation(path)
        run = read_run(run_dir) if run_dir is not None else None
        return Entry(source=path, label="", evaluations=[read_evaluation(path)], run=run)
    if (path / CONFIG_YAML).is_file():
        run = read_run(path)
        found = (path / "evaluation").glob("*/")
        folders = sorted(p for p in found if (p / SUMMARY_JSON).is_file())
        if not folders:
            stage = run.final_stage or "<stage>"
            data = (run.config.get("data") or {}).get("root") or "DIR"
            raise CompareError(
                f"{path} has no evaluation yet (a run evaluates its final model when all its "
                f"stages have finished); run `condseg evaluate {path / stage}/"
                f"model.safetensors --data {data} --split SPLIT --out {path}/evaluation/SPLIT`"
            )
        return Entry(source=path, label="", evaluations=[read_evaluation(p) for p in folders],
                     run=run)
    raise CompareError(
        f"{path} is neither a run folder ({CONFIG_YAML}) nor an evaluation folder "
        f"({SUMMARY_JSON} and {PER_IMAGE_CSV})"
    )


# --------------------------------------------------------------------------- labels, columns


def method_name(entry: Entry) -> str:
    """config.yaml ``method``, else the evaluation's ``method``, else its ``model``."""
    if entry.run is not None and entry.run.config.get("method"):
        return str(entry.run.config["method"])
    for key in ("method", "model"):
        for evaluation in entry.evaluations:
            if evaluation.protocol.get(key):
                return str(evaluation.protocol[key])
    return entry.source.name


def assign_labels(entries: Sequence[Entry], labels: Sequence[str] | None) -> None:
    """Explicit labels in input order, else method names made unique by their folder name."""
    if labels:
        if len(labels) != len(entries):
            raise CompareError(
                f"got {len(labels)} labels for {len(entries)} inputs; give one --label per input"
            )
        if len(set(labels)) != len(labels):
            raise CompareError(f"labels must be unique, got {', '.join(labels)}")
        for entry, label in zip(entries, labels, strict=True):
            entry.label = label
        return
    names = [method_name(e) for e in entries]
    taken: set[str] = set()
    for entry, name in zip(entries, names, strict=True):
        label = name
        if names.count(name) > 1:
            folder = entry.run.path if entry.run is not None else entry.source
            label = f"{name} ({folder.resolve().name})"
        base, k = label, 2
        while label in taken:
            label, k = f"{base} #{k}", k + 1
        taken.add(label)
        entry.label = label


def assign_columns(entries: Sequence[Entry]) -> list[str]:
    """Name each evaluation's dataset column (data root name / split, plus the resolution
    protocol when the inputs differ in it) and return the columns in order of appearance."""
    evaluations = [e for entry in entries for e in entry.evaluations]
    resolutions = {e.protocol.get("resolution") for e in evaluations}
    columns: list[str] = []
    for entry in entries:
        seen: dict[str, Path] = {}
        for evaluation in entry.evaluations:
            evaluation.column = column_name(evaluation.protocol, len(resolutions) > 1)
            if evaluation.column in seen:
                raise CompareError(
                    f"{entry.source} has two evaluations of {evaluation.column} "
                    f"({seen[evaluation.column]} and {evaluation.path}); give the evaluation "
                    "folder you mean instead"
                )
            seen[evaluation.column] = evaluation.path
            if evaluation.column not in columns:
                columns.append(evaluation.column)
    return columns


def column_name(protocol: Mapping[str, Any], with_resolution: bool) -> str:
    root = str(protocol.get("data_root") or "").rstrip("/\\")
    name = f"{Path(root).name or 'data'}/{protocol.get('split', '?')}"
    return f"{name} ({protocol.get('resolution', '?')})" if with_resolution else name


def validation_notes(entries: Sequence[Entry], columns: Sequence[str]) -> list[str]:
    """Say which columns are validation splits: the images that selected each model (best val
    mIoU), so their figures are optimistic next to a test split's."""
    validation = {e.column for entry in entries for e in entry.evaluations
                  if _is_validation(e, entry.run)}
    return [f"{column}: the validation split, which selected each model (no test split); "
            "its figures are optimistic — report a held-out test split in a paper"
            for column in columns if column in validation]


def _is_validation(evaluation: Evaluation, run: RunInfo | None) -> bool:
    split = str(evaluation.protocol.get("split", ""))
    data = (run.config.get("data") or {}) if run is not None else {}
    return split == data.get("val_split", "val") or split.rsplit("/", 1)[-1] == "val"


def protocol_notes(entries: Sequence[Entry], columns: Sequence[str]) -> list[str]:
    """Warn when evaluations in one column used different input sizes or thresholds."""
    notes = []
    for column in columns:
        evaluations = [e for entry in entries if (e := entry.evaluation(column)) is not None]
        for key in ("input_size", "threshold"):
            values = {json.dumps(e.protocol.get(key)) for e in evaluations}
            if len(values) > 1:
                shown = ", ".join(sorted(values))
                notes.append(f"{column}: the evaluations differ in {key} ({shown})")
    return notes


# --------------------------------------------------------------------------- statistics


def paired_statistics(entries: Sequence[Entry]) -> tuple[list[PairedResult], list[str]]:
    """Every later input against the first on each column evaluated on the same images."""
    reference, results, notes = entries[0], [], []
    for entry in entries[1:]:
        for evaluation in entry.evaluations:
            base = reference.evaluation(evaluation.column)
            why = _not_paired(base, evaluation, reference.label)
            if why:
                notes.append(f"no statistics for {entry.label} on {evaluation.column}: {why}")
                continue
            assert base is not None
            names = sorted(base.per_image)
            test = paired_test([evaluation.per_image[n].get("dice") for n in names],
                               [base.per_image[n].get("dice") for n in names])
            results.append(PairedResult(label=entry.label, column=evaluation.column, test=test))
            if test.note:
                notes.append(f"{entry.label} on {evaluation.column}: {test.note}")
    return results, notes


def _not_paired(base: Evaluation | None, other: Evaluation, reference: str) -> str:
    """Why ``other`` cannot be paired with the reference evaluation (empty when it can)."""
    if base is None:
        return f"the reference {reference} was not evaluated on it"
    ours, theirs = set(other.per_image), set(base.per_image)
    if ours != theirs:
        return (f"different images ({len(ours)} vs {len(theirs)} in the reference, "
                f"{len(ours & theirs)} in common)")
    if not ours:
        return "no images"
    return ""


# --------------------------------------------------------------------------- entry point


def compare(
    inputs: Sequence[Path],
    labels: Sequence[str] | None = None,
    out_dir: Path | None = None,
    figure_dir: Path | None = None,
    images: int | str | Sequence[str] = 4,
    overwrite: bool = False,
    console: Console | None = None,
) -> Comparison:
    """Build the comparison of ``inputs`` (the first is the reference), write the tables to
    ``out_dir`` and the figures to ``figure_dir`` when given, and print to ``console``.
    ``images`` chooses the rows of predictions.png (:func:`parse_images`).

    Existing output files are refused (FileExistsError) unless ``overwrite``, and images that
    are not there are refused, before anything is written or any model is loaded.
    """
    if not inputs:
        raise CompareError("give at least one run or evaluation folder to compare")
    choice = parse_images(images)
    planned = [Path(out_dir) / n for n in OUTPUT_FILES] if out_dir is not None else []
    planned += [Path(figure_dir) / n for n in FIGURE_FILES] if figure_dir is not None else []
    _refuse_existing(planned, overwrite)

    entries = [read_input(Path(p)) for p in inputs]
    assign_labels(entries, labels)
    columns = assign_columns(entries)
    stats, notes = paired_statistics(entries)
    result = Comparison(entries=entries, columns=columns, stats=stats,
                        notes=[*validation_notes(entries, columns),
                               *protocol_notes(entries, columns), *notes])
    result.notes += degenerate_notes(result)
    chosen = figure_images(result, choice) if figure_dir is not None else None
    if out_dir is not None:
        result.written += write_tables(result, Path(out_dir))
    if console is not None:  # before the figures, which load and run every model
        print_tables(result, console)
    if figure_dir is not None and chosen is not None:
        written, figure_notes = write_figures(result, Path(figure_dir), chosen)
        result.written += written
        result.notes += figure_notes
    if console is not None:
        print_notes(result, console)
    return result


def _refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    """Raise before writing anything if an output would replace an existing file."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{', '.join(existing)} already exist(s); pass --overwrite to replace them"
        )


# --------------------------------------------------------------------------- formatting


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


def print_comparison(result: Comparison, console: Console) -> None:
    """The Table 1 layout, then the paired statistics, then the notes and files written."""
    print_tables(result, console)
    print_notes(result, console)


def print_tables(result: Comparison, console: Console) -> None:
    """The Table 1 layout (best of each column in bold) and the paired statistics."""
    table = Table(title=f"Comparison ({len(result.entries)} methods, percent)",
                  caption=EMPTY_NOTE if _any_degenerate(result) else None)
    table.add_column("Method")
    for column in result.columns:
        for name in TABLE_METRICS.values():
            table.add_column(f"{escape(column)}\n{name}", justify="right")
    for label in result.labels:
        cells: list[Text | str] = [Text(label)]
        for column in result.columns:
            for metric in TABLE_METRICS:
                bold = label in best_labels(result, column, metric)
                cells.append(Text(result.text(label, column, metric),
                                  style="bold" if bold else ""))
        table.add_row(*cells)
    console.print(table)
    if result.stats:
        console.print(stats_table(result))


def print_notes(result: Comparison, console: Console) -> None:
    """What was skipped and why, then the files written."""
    for note in result.notes:
        console.print(Text(f"note: {note}", style="yellow"))
    for path in result.written:
        console.print(Text(f"wrote {path}"))


def stats_table(result: Comparison) -> Table:
    """Mean per-image Dice gain over the reference in percentage points, its bootstrap 95%
    interval and the Wilcoxon signed-rank p value."""
    table = Table(title=Text(f"Paired per-image Dice against {result.reference}"))
    for name in ("Method", "Dataset", "n images", "mean ΔDice (pp)", "95% CI (pp)",
                 "Wilcoxon p"):
        table.add_column(name, justify="left" if name in ("Method", "Dataset") else "right")
    for row in result.stats:
        t = row.test
        table.add_row(Text(row.label), Text(row.column), str(t.n), _pp(t.mean_diff),
                      f"[{_pp(t.ci_low)}, {_pp(t.ci_high)}]", _p(t.p_value))
    return table


def _pp(value: float) -> str:
    return MISSING if not math.isfinite(value) else f"{100 * value:+.2f}"


def _p(value: float) -> str:
    return MISSING if not math.isfinite(value) else f"{value:.3g}"


# --------------------------------------------------------------------------- output files


def write_tables(result: Comparison, out_dir: Path) -> list[Path]:
    """compare.md, compare.csv, compare.tex and stats.csv in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / n for n in OUTPUT_FILES]
    paths[0].write_text(markdown_table(result))
    _write_csv(paths[1], table_csv_rows(result))
    paths[2].write_text(latex_table(result))
    _write_csv(paths[3], stats_csv_rows(result))
    return paths


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def table_csv_rows(result: Comparison) -> list[list[str]]:
    """Header and one row per method; percent values, empty cell = missing."""
    header = ["method", "source"] + [f"{c} {n}" for c in result.columns
                                     for n in TABLE_METRICS.values()]
    rows = [header]
    for entry in result.entries:
        values = [result.value(entry.label, c, m) for c in result.columns for m in TABLE_METRICS]
        rows.append([entry.label, str(entry.source)]
                    + ["" if v is None else f"{v:.4f}" for v in values])
    return rows


def stats_csv_rows(result: Comparison) -> list[list[str]]:
    """One row per paired comparison; Dice differences as fractions like per_image.csv."""
    rows = [["reference", "method", "dataset", "n_images", "mean_dice_diff", "ci95_low",
             "ci95_high", "wilcoxon_p", "note"]]
    for row in result.stats:
        t = row.test
        numbers = [t.mean_diff, t.ci_low, t.ci_high, t.p_value]
        rows.append([result.reference, row.label, row.column, str(t.n)]
                    + ["" if not math.isfinite(v) else f"{v:.6g}" for v in numbers] + [t.note])
    return rows


def markdown_table(result: Comparison) -> str:
    """A GitHub Markdown table; the best value of each column in bold."""
    header = ["Method"] + [f"{c} {n}" for c in result.columns for n in TABLE_METRICS.values()]
    lines = [_md_row(header), _md_row(["---"] + ["---:"] * (len(header) - 1))]
    for label in result.labels:
        cells = [label]
        for column in result.columns:
            for metric in TABLE_METRICS:
                text = result.text(label, column, metric)
                cells.append(f"**{text}**" if label in best_labels(result, column, metric)
                             else text)
        lines.append(_md_row(cells))
    if _any_degenerate(result):
        lines += ["", EMPTY_NOTE]
    return "\n".join(lines) + "\n"


def _any_degenerate(result: Comparison) -> bool:
    return any(result.degenerate(label, column, metric) for label in result.labels
               for column in result.columns for metric in TABLE_METRICS)


def degenerate_notes(result: Comparison) -> list[str]:
    """How many empty predictions each marked precision counts."""
    return [f"{label} on {column}: precision counts {n} image(s) with an empty prediction as "
            "100 (0/0); not ranked"
            for label in result.labels for column in result.columns
            if (n := result.empty_predictions(label, column))]


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def latex_table(result: Comparison) -> str:
    """A booktabs ``tabular``: datasets as spanning headers over the four metrics, the best
    value of each column in bold (needs ``\\usepackage{booktabs}``)."""
    k = len(TABLE_METRICS)
    spec = "l" + " ".join("c" * k for _ in result.columns)
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    spans = [f"\\multicolumn{{{k}}}{{c}}{{{latex_escape(c)}}}" for c in result.columns]
    lines.append(" & ".join(["Method", *spans]) + " \\\\")
    rules = [f"\\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(len(result.columns))]
    lines.append(" ".join(rules))
    lines.append(" & ".join(["", *list(TABLE_METRICS.values()) * len(result.columns)]) + " \\\\")
    lines.append("\\midrule")
    for label in result.labels:
        cells = [latex_escape(label)]
        for column in result.columns:
            for metric in TABLE_METRICS:
                text = result.text(label, column, metric, missing="--")
                text = text.replace(EMPTY_MARK, "$^\\dagger$")
                best = label in best_labels(result, column, metric)
                cells.append(f"\\textbf{{{text}}}" if best else text)
        lines.append(" & ".join(cells) + " \\\\")
    lines.append("\\bottomrule")
    if _any_degenerate(result):
        note = latex_escape(EMPTY_NOTE.removeprefix(EMPTY_MARK))
        lines.append(f"\\multicolumn{{{1 + k * len(result.columns)}}}{{l}}"
                     f"{{\\footnotesize $^\\dagger${note}}} \\\\")
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def evenly_spaced(names: Sequence[str], n: int) -> list[str]:
    """``n`` names spread evenly over the sorted ``names`` (all of them when fewer), so the
    figure shows the same images every time."""
    ordered = sorted(names)
    if len(ordered) <= n:
        return ordered
    index = np.linspace(0, len(ordered) - 1, n).round().astype(int)
    return [ordered[i] for i in index]


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class ImageChoice:
    """The rows of predictions.png: ``count`` images evenly spaced over the sorted names, the
    ``names`` given, or the ``count`` images ranked ``"best"``/``"worst"`` for the first input."""

    count: int = 4
    names: tuple[str, ...] = ()
    rank: str | None = None


def parse_images(spec: int | str | Sequence[str]) -> ImageChoice:
    """``4`` (evenly spaced), ``"worst:4"`` / ``"best:4"`` (:func:`ranked_images`) or image
    names (``"a,b"``, or a list); a single name that is a number is written ``"12,"``."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        count = int(spec)
        if count < 1:
            raise CompareError(f"--images must be at least 1, got {spec}")
        return ImageChoice(count=count)
    if isinstance(spec, str):
        rank, colon, count_text = spec.strip().partition(":")
        if colon and rank in ("best", "worst"):
            if not count_text.strip().isdigit() or int(count_text) < 1:
                raise CompareError(f"--images {spec}: give {rank}:K with K a whole number of "
                                   "images, at least 1 (e.g. worst:4)")
            return ImageChoice(count=int(count_text), rank=rank)
        spec = spec.split(",")
    names = tuple(dict.fromkeys(n.strip() for n in spec if n.strip()))
    if not names:
        raise CompareError(f"--images {spec!r} names no image; give a number of images, "
                           "worst:K, best:K or image names separated by commas")
    return ImageChoice(count=len(names), names=names)


def figure_images(result: Comparison, choice: ImageChoice) -> tuple[Path, list[str]] | str:
    """Data root and the chosen names of the reference's first dataset (images every input
    evaluated on that dataset shares), or why there are none. Raises CompareError for chosen
    names that are not among them."""
    evaluation = result.entries[0].evaluations[0]
    names = set(evaluation.per_image)
    for entry in result.entries[1:]:
        other = entry.evaluation(evaluation.column)
        if other is not None:
            names &= set(other.per_image)
    unknown = [n for n in choice.names if n not in names]
    if unknown:
        some = ", ".join(sorted(names)[:3]) or "none"
        raise CompareError(
            f"--images: {', '.join(unknown)} not among the {len(names)} images of "
            f"{evaluation.column} that every input was evaluated on (e.g. {some})")
    root = Path(str(evaluation.protocol.get("data_root", "")))
    if not str(evaluation.protocol.get("data_root", "")) or not root.is_dir():
        return f"the data root {root} of {evaluation.path} is not here"
    if not names:
        return f"the inputs share no image of {evaluation.column}"
    if choice.names:
        return root, list(choice.names)
    if choice.rank is not None:
        return root, ranked_images(result, evaluation.column, names, choice.rank, choice.count)
    return root, evenly_spaced(sorted(names), choice.count)


def ranked_images(
    result: Comparison, column: str, names: set[str], rank: str, count: int
) -> list[str]:
    """The ``count`` images where the first input's Dice is furthest above (``best``) or below
    (``worst``) the mean Dice of the other inputs on ``column``, most extreme first; with no
    other input, its own highest or lowest Dice. Images without a Dice for every input are not
    ranked; ties go by name."""
    scores = [e.per_image for entry in result.entries
              if (e := entry.evaluation(column)) is not None]
    gains = {}
    for name in names:
        dice = [s[name].get("dice") for s in scores]
        if all(d is not None for d in dice):
            others = dice[1:]
            gains[name] = dice[0] - (sum(others) / len(others) if others else 0.0)
    sign = -1 if rank == "best" else 1
    return sorted(gains, key=lambda n: (sign * gains[n], n))[:count]


def write_figures(
    result: Comparison, figure_dir: Path, chosen: tuple[Path, list[str]] | str
) -> tuple[list[Path], list[str]]:
    """predictions.png/.pdf (the paper's Fig. 2) of the ``chosen`` images and curves.png/.pdf
    (its Fig. 5), each skipped with a note when nothing can be drawn."""
    figure_dir.mkdir(parents=True, exist_ok=True)
    written, notes = prediction_figure(result, figure_dir / "predictions.png", chosen)
    more_written, more_notes = curves_figure(result, figure_dir / "curves.png")
    return written + more_written, notes + more_notes


def model_file(entry: Entry) -> Path | None:
    """A run's own final model (inside the run folder, which may have been moved or copied:
    the absolute path its evaluations recorded may be another copy's), else the model file an
    evaluation folder was evaluated with (its protocol's ``model_file``)."""
    candidates = []
    run = entry.run
    if run is not None and run.final_stage is not None:
        result_json = run.path / run.final_stage / "result.json"
        try:
            recorded = json.loads(result_json.read_text()).get("model_file")
        except (OSError, json.JSONDecodeError, AttributeError):
            recorded = None
        if recorded:  # relative to the run; an older run recorded an absolute path
            candidates += [run.path / run.final_stage / Path(recorded).name,
                           run.path / recorded]
    candidates += [Path(e.protocol["model_file"]) for e in entry.evaluations
                   if e.protocol.get("model_file")]
    return next((p for p in candidates if p.is_file()), candidates[0] if candidates else None)


def prediction_figure(
    result: Comparison, out_png: Path, chosen: tuple[Path, list[str]] | str
) -> FigureResult:
    """Image, ground truth and each method's predicted mask for the chosen shared images."""
    import condseg
    from condseg.data.dataset import find_pair, read_image, read_mask
    from condseg.viz import prediction_grid

    if isinstance(chosen, str):
        return [], [f"predictions.png not written: {chosen}"]
    root, names = chosen
    try:
        pairs = [find_pair(root, name) for name in names]
        images = [read_image(image) for image, _ in pairs]
        truths = [read_mask(mask) for _, mask in pairs]
    except CondsegError as exc:
        return [], [f"predictions.png not written: {exc}"]
    notes: list[str] = []
    masks: dict[str, list[np.ndarray]] = {}
    captions: dict[str, list[str]] = {}
    for entry in result.entries:
        path = model_file(entry)
        if path is None or not path.is_file():
            where = "no model file is recorded" if path is None else f"model file {path} not found"
            notes.append(f"{entry.label} left out of predictions.png: {where}")
            continue
        try:
            model = condseg.load_model(path)
            masks[entry.label] = [condseg.predict(model, image).mask for image in images]
        except (OSError, ValueError, CondsegError) as exc:
            notes.append(f"{entry.label} left out of predictions.png: {exc}")
            continue
        captions[entry.label] = [f"Dice {100 * dice(m, t):.1f}"
                                 for m, t in zip(masks[entry.label], truths, strict=True)]
    if not masks:
        return [], [*notes, "predictions.png not written: no model could be loaded"]
    prediction_grid(names, images, truths, masks, out_png, captions=captions, pdf=True)
    result.figure_images = list(names)
    return [out_png, out_png.with_suffix(".pdf")], notes


def dice(mask: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty, as in the evaluation."""
    total = int(mask.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(mask, truth).sum()) / total


def curves_figure(result: Comparison, out_png: Path) -> FigureResult:
    """Validation mDSC and loss per epoch of each run's final stage, one line per run."""
    from condseg.viz import plot_validation_curves

    logs: dict[str, Path] = {}
    notes: list[str] = []
    for entry in result.entries:
        log = entry.run.metrics_csv if entry.run is not None else None
        if log is None:
            why = "no training run" if entry.run is None else "no finished stage with a metrics.csv"
            notes.append(f"{entry.label} has no curve in curves.png: {why}")
        else:
            logs[entry.label] = log
    if not logs:
        return [], [*notes, "curves.png not written: no input has a training log"]
    try:
        drawn = plot_validation_curves(logs, out_png, pdf=True)
    except ValueError as exc:
        return [], [*notes, f"curves.png not written: {exc}"]
    notes += [f"{label} has no curve in curves.png: its log has no validation rows"
              for label in logs if label not in drawn]
    return [out_png, out_png.with_suffix(".pdf")], notes
