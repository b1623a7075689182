"""The comparison as tables: on the console (the paper's Table 1 layout and the paired
statistics) and as files (Markdown, CSV, LaTeX, and the statistics as CSV)."""

from __future__ import annotations

import csv
import math
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from condseg.evaluation.compare.result import EMPTY_MARK, Comparison, best_labels
from condseg.evaluation.names import MISSING, display_name
from condseg.files import atomic_file, write_text

OUTPUT_FILES = ("compare.md", "compare.csv", "compare.tex", "stats.csv")


# --------------------------------------------------------------------------- console


def print_tables(result: Comparison, console: Console) -> None:
    """The Table 1 layout (best of each column in bold) and the paired statistics."""
    runs = sum(entry.n_runs for entry in result.entries)
    title = (f"Comparison ({len(result.entries)} methods, {runs} runs, percent: mean ± std over "
             "runs)" if result.pooled else f"Comparison ({len(result.entries)} methods, percent)")
    table = Table(title=title, caption="\n".join(result.table_notes()) or None)
    table.add_column("Method")
    for header in result.extra:
        table.add_column(escape(header), justify="right")
    for column in result.columns:
        for metric in result.metrics:
            table.add_column(f"{escape(column)}\n{escape(display_name(metric))}", justify="right")
    for label in result.labels:
        cells: list[Text | str] = [Text(label), *map(Text, result.extra_cells(label))]
        for column in result.columns:
            for metric in result.metrics:
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
    """Mean per-image Dice gain over the reference in percentage points (multi-class: of the
    foreground-mean Dice), its bootstrap 95% interval and the Wilcoxon signed-rank p value."""
    dice = "Dice" if result.classes is None else "foreground-mean Dice"
    table = Table(title=Text(f"Paired per-image {dice} against {result.reference}"))
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


# --------------------------------------------------------------------------- files


def write_tables(result: Comparison, out_dir: Path) -> list[Path]:
    """compare.md, compare.csv, compare.tex and stats.csv in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / n for n in OUTPUT_FILES]
    write_text(paths[0], markdown_table(result))
    _write_csv(paths[1], table_csv_rows(result))
    write_text(paths[2], latex_table(result))
    _write_csv(paths[3], stats_csv_rows(result))
    return paths


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    with atomic_file(path) as tmp, tmp.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def table_csv_rows(result: Comparison) -> list[list[str]]:
    """Header and one row per method; percent values, empty cell = missing. Pooled rows add
    their number of runs, every run's folder (separated by ``;``) and after each value its
    std over runs (``<header> std``, empty for a value of one run)."""
    if not result.pooled:
        rows = [["method", "source", *result.extra, *result.headers()]]
        for entry in result.entries:
            rows.append([entry.label, str(entry.source), *result.extra_cells(entry.label),
                         *_cells(result.values(entry.label))])
        return rows
    headers = [name for header in result.headers() for name in (header, f"{header} std")]
    rows = [["method", "runs", "sources", *result.extra, *headers]]
    for entry in result.entries:
        pairs = zip(_cells(result.values(entry.label)), _cells(result.spreads(entry.label)),
                    strict=True)
        rows.append([entry.label, str(entry.n_runs),
                     ";".join(str(run.source) for run in entry.pooled),
                     *result.extra_cells(entry.label)]
                    + [cell for pair in pairs for cell in pair])
    return rows


def _cells(values: Sequence[float | None]) -> list[str]:
    return ["" if v is None else f"{v:.4f}" for v in values]


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
    header = ["Method", *result.extra, *result.headers()]
    lines = [markdown_row(header), markdown_row(["---"] + ["---:"] * (len(header) - 1))]
    for label in result.labels:
        cells = [label, *result.extra_cells(label)]
        for column in result.columns:
            for metric in result.metrics:
                text = result.text(label, column, metric)
                cells.append(f"**{text}**" if label in best_labels(result, column, metric)
                             else text)
        lines.append(markdown_row(cells))
    for note in result.table_notes():
        lines += ["", note]
    return "\n".join(lines) + "\n"


def markdown_row(cells: Sequence[str]) -> str:
    """One row of a Markdown table, every cell through :func:`markdown_cell`."""
    return "| " + " | ".join(markdown_cell(c) for c in cells) + " |"


def markdown_cell(text: str) -> str:
    """``text`` as a cell of a Markdown table (or a list item): ``|`` and ``\\`` escaped, a line
    break or other control character written as its escape (``\\n``), so that no name (a
    folder's) can end the cell, the row or the table."""
    return "".join("\\" + ch if ch in "|\\" else ch.encode("unicode_escape").decode()
                   if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in text)


def latex_table(result: Comparison) -> str:
    """A booktabs ``tabular``: datasets as spanning headers over the four metrics (and each
    class's Dice), the best value of each column in bold (needs ``\\usepackage{booktabs}``)."""
    k, e = len(result.metrics), len(result.extra)
    spec = "l" + "r" * e + " ".join("c" * k for _ in result.columns)
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    spans = [f"\\multicolumn{{{k}}}{{c}}{{{latex_escape(c)}}}" for c in result.columns]
    lines.append(" & ".join(["Method", *[""] * e, *spans]) + " \\\\")
    rules = [f"\\cmidrule(lr){{{2 + e + i * k}-{1 + e + (i + 1) * k}}}"
             for i in range(len(result.columns))]
    lines.append(" ".join(rules))
    names = [latex_escape(display_name(metric)) for metric in result.metrics]
    lines.append(" & ".join(["", *map(latex_escape, result.extra), *names * len(result.columns)])
                 + " \\\\")
    lines.append("\\midrule")
    for label in result.labels:
        cells = [latex_escape(label), *map(latex_escape, result.extra_cells(label))]
        for column in result.columns:
            for metric in result.metrics:
                text = result.text(label, column, metric, missing="--")
                text = text.replace(EMPTY_MARK, "$^\\dagger$").replace("±", "$\\pm$")
                best = label in best_labels(result, column, metric)
                cells.append(f"\\textbf{{{text}}}" if best else text)
        lines.append(" & ".join(cells) + " \\\\")
    lines.append("\\bottomrule")
    for note in result.table_notes():
        mark = "$^\\dagger$" if note.startswith(EMPTY_MARK) else ""
        lines.append(f"\\multicolumn{{{1 + e + k * len(result.columns)}}}{{l}}"
                     f"{{\\footnotesize {mark}{latex_escape(note.removeprefix(EMPTY_MARK))}}} "
                     "\\\\")
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
