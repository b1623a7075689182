"""``condseg compare``: several methods side by side, in the layout of the ConDSeg paper's Table 1.

Inputs are training run folders (``config.yaml``; their evaluations are ``RUN/evaluation/*/``)
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
FIGURE_FILES = ("predictions.png", "curves.png")
MISSING = "—"
FigureResult = tuple[Path | None, list[str]]  # the file written (None: skipped) and notes


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

    @property
    def labels(self) -> list[str]:
        return [e.label for e in self.entries]

    @property
    def reference(self) -> str:
        return self.entries[0].label

    def value(self, label: str, column: str, metric: str) -> float | None:
        """Mean of ``metric`` in percent, or None when that input has no such figure."""
        entry = next((e for e in self.entries if e.label == label), None)
        if entry is None:
            raise KeyError(f"no method labelled {label!r}; the labels are {self.labels}")
        evaluation = entry.evaluation(column)
        if evaluation is None:
            return None
        mean = evaluation.metrics.get(metric, {}).get("mean")
        return None if mean is None or not math.isfinite(mean) else 100 * float(mean)

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
                f"{path} has no evaluation yet; run `condseg evaluate {path / stage}/"
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
    n_images: int = 4,
    overwrite: bool = False,
    console: Console | None = None,
) -> Comparison:
    """Build the comparison of ``inputs`` (the first is the reference), write the tables to
    ``out_dir`` and the figures to ``figure_dir`` when given, and print to ``console``.

    Existing output files are refused (FileExistsError) unless ``overwrite``, before anything
    is written or any model is loaded.
    """
    if not inputs:
        raise CompareError("give at least one run or evaluation folder to compare")
    if n_images < 1:
        raise CompareError(f"--images must be at least 1, got {n_images}")
    planned = [Path(out_dir) / n for n in OUTPUT_FILES] if out_dir is not None else []
    planned += [Path(figure_dir) / n for n in FIGURE_FILES] if figure_dir is not None else []
    _refuse_existing(planned, overwrite)

    entries = [read_input(Path(p)) for p in inputs]
    assign_labels(entries, labels)
    columns = assign_columns(entries)
    stats, notes = paired_statistics(entries)
    result = Comparison(entries=entries, columns=columns, stats=stats,
                        notes=protocol_notes(entries, columns) + notes)
    if out_dir is not None:
        result.written += write_tables(result, Path(out_dir))
    if console is not None:  # before the figures, which load and run every model
        print_tables(result, console)
    if figure_dir is not None:
        written, figure_notes = write_figures(result, Path(figure_dir), n_images)
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


def fmt_percent(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def best_labels(result: Comparison, column: str, metric: str) -> set[str]:
    """Labels with the highest value (as printed) in a column; none when fewer than two
    methods have a value, as a single figure is best of nothing."""
    shown = {label: round(v, 2) for label in result.labels
             if (v := result.value(label, column, metric)) is not None}
    if len(shown) < 2:
        return set()
    top = max(shown.values())
    return {label for label, v in shown.items() if v == top}


def print_comparison(result: Comparison, console: Console) -> None:
    """The Table 1 layout, then the paired statistics, then the notes and files written."""
    print_tables(result, console)
    print_notes(result, console)


def print_tables(result: Comparison, console: Console) -> None:
    """The Table 1 layout (best of each column in bold) and the paired statistics."""
    table = Table(title=f"Comparison ({len(result.entries)} methods, percent)")
    table.add_column("Method")
    for column in result.columns:
        for name in TABLE_METRICS.values():
            table.add_column(f"{escape(column)}\n{name}", justify="right")
    for label in result.labels:
        cells: list[Text | str] = [Text(label)]
        for column in result.columns:
            for metric in TABLE_METRICS:
                text = fmt_percent(result.value(label, column, metric))
                bold = label in best_labels(result, column, metric)
                cells.append(Text(text, style="bold" if bold else ""))
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
                text = fmt_percent(result.value(label, column, metric))
                cells.append(f"**{text}**" if label in best_labels(result, column, metric)
                             else text)
        lines.append(_md_row(cells))
    return "\n".join(lines) + "\n"


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
                value = result.value(label, column, metric)
                text = "--" if value is None else f"{value:.2f}"
                best = label in best_labels(result, column, metric)
                cells.append(f"\\textbf{{{text}}}" if best else text)
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
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


def write_figures(
    result: Comparison, figure_dir: Path, n_images: int
) -> tuple[list[Path], list[str]]:
    """predictions.png (the paper's Fig. 2) and curves.png (its Fig. 5), each skipped with a
    note when nothing can be drawn."""
    figure_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    notes: list[str] = []
    for make, name in ((prediction_figure, "predictions.png"), (curves_figure, "curves.png")):
        path, more = make(result, figure_dir / name, n_images)
        notes += more
        if path is not None:
            written.append(path)
    return written, notes


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


def figure_images(result: Comparison, n_images: int) -> tuple[Path, list[str]] | str:
    """Data root and the chosen names of the reference's first dataset (images every input
    evaluated on that dataset shares), or why there are none."""
    evaluation = result.entries[0].evaluations[0]
    root = Path(str(evaluation.protocol.get("data_root", "")))
    if not str(evaluation.protocol.get("data_root", "")) or not root.is_dir():
        return f"the data root {root} of {evaluation.path} is not here"
    names = set(evaluation.per_image)
    for entry in result.entries[1:]:
        other = entry.evaluation(evaluation.column)
        if other is not None:
            names &= set(other.per_image)
    if not names:
        return f"the inputs share no image of {evaluation.column}"
    return root, evenly_spaced(sorted(names), n_images)


def prediction_figure(result: Comparison, out_png: Path, n_images: int) -> FigureResult:
    """Image, ground truth and each method's predicted mask for a few shared images."""
    import condseg
    from condseg.data.dataset import find_pair, read_image, read_mask
    from condseg.viz import prediction_grid

    chosen = figure_images(result, n_images)
    if isinstance(chosen, str):
        return None, [f"predictions.png not written: {chosen}"]
    root, names = chosen
    try:
        pairs = [find_pair(root, name) for name in names]
        images = [read_image(image) for image, _ in pairs]
        truths = [read_mask(mask) for _, mask in pairs]
    except CondsegError as exc:
        return None, [f"predictions.png not written: {exc}"]
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
        return None, [*notes, "predictions.png not written: no model could be loaded"]
    return prediction_grid(names, images, truths, masks, out_png, captions=captions), notes


def dice(mask: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty, as in the evaluation."""
    total = int(mask.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(mask, truth).sum()) / total


def curves_figure(result: Comparison, out_png: Path, n_images: int) -> FigureResult:
    """Validation mDSC and loss per epoch of each run's final stage, one line per run."""
    from condseg.viz import plot_validation_curves

    del n_images  # same signature as prediction_figure
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
        return None, [*notes, "curves.png not written: no input has a training log"]
    try:
        drawn = plot_validation_curves(logs, out_png)
    except ValueError as exc:
        return None, [*notes, f"curves.png not written: {exc}"]
    notes += [f"{label} has no curve in curves.png: its log has no validation rows"
              for label in logs if label not in drawn]
    return out_png, notes
