"""What a study shows: the protocol every method receives with what each recipe gave up (on
the console before any run), and ``study.md`` — protocol (with the dataset's classes when it
has several), machine, every run's wall time and peak memory, what each recipe gave up, and the
comparison (multi-class: with each class's Dice)."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from condseg import __version__
from condseg.data.labels import read_labels
from condseg.epoch_log import read_epochs
from condseg.evaluation.compare import Comparison
from condseg.evaluation.compare.tables import OUTPUT_FILES, markdown_cell, markdown_row
from condseg.files import write_text
from condseg.inference.loading import usable_cores
from condseg.layout import StudyDir
from condseg.study.protocol import MethodProtocol
from condseg.study.runs import StudyRun
from condseg.study.spec import StudySpec


def print_protocol(spec: StudySpec, protocols: Sequence[MethodProtocol], console: Console) -> None:
    """What every method receives (one row each) and what each recipe gave up, and why."""
    table = Table(title=f"Study protocol: {protocol_line(spec)}")
    for name in ("method", "stages (epochs)", "size", "batch", "precision", "pretrained"):
        table.add_column(name)
    for protocol in protocols:
        table.add_row(*_receives(protocol))
    console.print(table)
    if spec.budget.compute is not None:
        kind = spec.budget.compute
        cost = Table(title=f"Compute budget: {spec.budget.describe()}")
        for name in budget_columns(kind):
            cost.add_column(name, justify="left" if name in ("method", "stage") else "right")
        for row in budget_rows(protocols, kind):
            cost.add_row(*row)
        console.print(cost)
    for protocol in protocols:
        for line in change_lines(protocol):
            console.print(f"[yellow]not as its recipe:[/] {protocol.name}: {escape(line)}",
                          highlight=False)


def protocol_line(spec: StudySpec) -> str:
    runs = (f"folds 0-{spec.folds - 1}" if spec.folds else "") + (
        f"{', ' if spec.folds else ''}seeds {', '.join(map(str, spec.seed_list))}"
        if spec.seeds is not None or not spec.folds else "")
    return f"{spec.data}; {runs}; {spec.budget.describe()}"


def _receives(protocol: MethodProtocol) -> list[str]:
    config = protocol.config()
    stages = ", ".join(f"{s} ({config.stages[s].max_epochs})" for s in config.stages_to_train())
    return [protocol.name if protocol.name == protocol.method
            else f"{protocol.name} ({protocol.method})", stages, str(config.data.size),
            str(config.data.batch_size), config.precision, str(config.model.pretrained).lower()]


def change_lines(protocol: MethodProtocol) -> list[str]:
    """``key: recipe -> value (reason)`` for every value that differs from the recipe."""
    return [f"{c.key}: {_show(c.recipe)} -> {_show(c.value)} ({c.reason})"
            for c in protocol.changes]


def budget_columns(kind: str) -> list[str]:
    """The columns of :func:`budget_rows` under a budget of ``kind`` (flops or time)."""
    timed = ["s/epoch (here)"] if kind == "time" else []
    return ["method", "stage", "GFLOP/img", "img/epoch", "TFLOP/epoch", *timed, "epochs",
            "planned TFLOP", *(["planned time"] if timed else [])]


def budget_rows(protocols: Sequence[MethodProtocol], kind: str) -> list[list[str]]:
    """One row per trained stage of each method under a compute budget: its measured cost per
    epoch and the epochs it got; the method's planned totals on its first row."""
    rows = []
    for protocol in protocols:
        cost = protocol.cost or {}
        for i, (stage, c) in enumerate(cost.get("stages", {}).items()):
            first = i == 0
            timed = ([f"{c['seconds_per_epoch']:.1f}"] if kind == "time" else [])
            planned = ([duration(cost["planned_seconds"]) if first else ""]
                       if kind == "time" else [])
            rows.append([protocol.name if first else "", stage, f"{c['gflop_per_image']:.2f}",
                         str(c["images_per_epoch"]), f"{c['tflop_per_epoch']:.3f}", *timed,
                         str(c["epochs"]), f"{cost['planned_tflop']:.2f}" if first else "",
                         *planned])
    return rows


def duration(seconds: float) -> str:
    """``1h 02m``, ``4m 05s`` or ``12s``."""
    whole = round(seconds)
    hours, minutes, secs = whole // 3600, whole % 3600 // 60, whole % 60
    return (f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes
            else f"{secs}s")


@dataclass(frozen=True)
class Spent:
    """What one run of a study trained: epochs per stage, training FLOPs and (where its logs
    have it) training time."""

    epochs: dict[str, int]
    tflop: float
    seconds: float | None


def spent(run: StudyRun, protocol: MethodProtocol) -> Spent | None:
    """The run's epochs (its stages' ``metrics.csv``; 0 for a stage without one: not trained
    yet), FLOPs (their ``train_tflop``, else the epochs times the cost per epoch measured for
    the budget) and time (``epoch_seconds``); None when no stage has a log."""
    stages = (protocol.cost or {}).get("stages", {})
    epochs, tflop, seconds = dict.fromkeys(stages, 0), 0.0, 0.0
    for name, cost in stages.items():
        try:
            rows = read_epochs(run.run.stage(name).metrics)
        except (OSError, ValueError):  # not trained (yet), or a log that cannot be read
            continue
        epochs[name] = len(rows)
        logged = [r.get("train_tflop") for r in rows.values()]
        tflop += (sum(logged) if all(v is not None for v in logged) else
                  len(rows) * cost["tflop_per_epoch"])
        times = [r.get("epoch_seconds") for r in rows.values()]
        seconds = None if seconds is None or any(t is None for t in times) else (
            seconds + sum(times))
    return Spent(epochs, tflop, seconds) if any(epochs.values()) else None


def cost_columns(
    protocols: Sequence[MethodProtocol], runs: Sequence[StudyRun]
) -> dict[str, dict[str, str]]:
    """The comparison's ``epochs`` and ``TFLOP`` columns under a compute budget: each method's
    epochs per stage (``3+6``) and its mean training TFLOP over its runs."""
    columns: dict[str, dict[str, str]] = {"epochs": {}, "TFLOP": {}}
    for protocol in protocols:
        found = [s for r in runs if r.method == protocol.name
                 and (s := spent(r, protocol)) is not None]
        if protocol.cost is None or not found:
            continue
        epochs = {"+".join(map(str, s.epochs.values())) for s in found}
        columns["epochs"][protocol.name] = ", ".join(sorted(epochs))
        columns["TFLOP"][protocol.name] = f"{sum(s.tflop for s in found) / len(found):.2f}"
    return columns


def _budget_lines(
    spec: StudySpec, protocols: Sequence[MethodProtocol], runs: Sequence[StudyRun]
) -> list[str]:
    """``## Budget`` of study.md: what each method got, then what each run spent."""
    if spec.budget.compute is None:
        return []
    md, kind = markdown_cell, spec.budget.compute
    columns = budget_columns(kind)
    lines = ["## Budget", "", md(spec.budget.describe()) + ".", "", markdown_row(columns),
             markdown_row(["---", "---"] + ["---:"] * (len(columns) - 2))]
    lines += [markdown_row(row) for row in budget_rows(protocols, kind)]
    threads = sorted({str(p.cost.get("calibrated_threads")) for p in protocols if p.cost})
    hosts = sorted({str(p.cost.get("calibrated_on", "?")) for p in protocols if p.cost})
    if spec.budget.compute == "time":
        lines += ["", f"Seconds per epoch calibrated on {md(', '.join(hosts))} with "
                  f"{', '.join(threads)} "
                  "thread(s) per job: timed image loading, training steps, validation batches "
                  "and checkpoint serialisation (Lightning's loops, logs and file writes come "
                  "on top). A run's training time below is its epochs' measured seconds "
                  "(training and validation; the checkpoint writes after each epoch are not "
                  "in it); its job's whole wall time is in the runs' table."]
    lines += ["", "FLOPs: torch's flop counter over one training step per image (every view's "
              "forward pass, the loss, the backward pass) of the plain computation.", "",
              "| run | epochs | TFLOP spent | training time |", "|---|---|---:|---:|"]
    by_name = {p.name: p for p in protocols}
    for run in runs:
        protocol = by_name[run.method]
        used = spent(run, protocol)
        whole = run.is_finished(protocol.config().stages_to_train())
        lines.append(markdown_row([run.label, "not trained", "", ""] if used is None else [
            run.label, "+".join(map(str, used.epochs.values())) + ("" if whole else
                                                                   " (unfinished)"),
            f"{used.tflop:.2f}", "" if used.seconds is None else duration(used.seconds)]))
    return [*lines, ""]


def _classes_line(spec: StudySpec) -> list[str]:
    """``- classes: ...`` of a multi-class dataset (none for a binary one)."""
    labels = read_labels(spec.data) if spec.data is not None else None
    if labels is None or labels.foreground < 2:
        return []
    return [f"- classes: {markdown_cell(', '.join(labels.names))} (each class's Dice in the "
            "comparison)"]


def _show(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(
        value)


def machine() -> str:
    """The machine in one line: CPU model and usable cores, memory, GPUs, torch."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return (f"{cpu}, {usable_cores()} usable cores ({'native' if bf16 else 'no native'} CPU "
            f"bf16); GPUs: {', '.join(gpus) or 'none'}; torch {torch.__version__}, condseg "
            f"{__version__}")


def write_report(
    study: StudyDir, spec: StudySpec, protocols: Sequence[MethodProtocol],
    runs: Sequence[StudyRun], comparison: Comparison | None, wall_s: float,
) -> Path:
    """``STUDY/study.md``; every name and value in it through
    :func:`~condseg.evaluation.compare.tables.markdown_cell` (a folder's name cannot break it)."""
    md = markdown_cell
    lines = [f"# Study {md(spec.description or study.path.name)}", "",
             f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; this call took "
             f"{wall_s / 60:.1f} min.", "", "## Protocol", "",
             f"- data: `{md(str(spec.data))}`", *_classes_line(spec),
             f"- runs: {md(protocol_line(spec).split('; ', 1)[1])}",
             f"- launcher: {spec.launcher.name}, {spec.launcher.jobs} job(s) at once",
             f"- machine: {md(machine())}",
             f"- study-wide overrides: {md(', '.join(spec.overrides)) or 'none'}", "",
             "| method | stages (epochs) | size | batch | precision | pretrained |",
             "|---|---|---|---|---|---|"]
    lines += [markdown_row(_receives(p)) for p in protocols]
    lines += ["", "## What each recipe gave up", ""]
    for protocol in protocols:
        changes = change_lines(protocol)
        lines += [f"- **{protocol.name}**:" + ("" if changes else " nothing")]
        lines += [f"  - `{md(line)}`" for line in changes]
    lines += ["", *_budget_lines(spec, protocols, runs)]
    lines += ["## Runs", "", "| run | status | wall time (s) | peak memory (GB) | attempts "
              "| host |", "|---|---|---:|---:|---:|---|"]
    stages = {p.name: p.config().stages_to_train() for p in protocols}
    for run in runs:
        attempts = run.attempts()
        status = "finished" if run.is_finished(stages[run.method]) else (
            f"failed (exit {attempts[-1].exit_code})" if attempts else "not run")
        wall = sum(a.wall_s for a in attempts)
        peak = max((a.peak_rss_mb for a in attempts), default=0) / 1024
        hosts = ", ".join(sorted({a.host for a in attempts}))
        lines.append(markdown_row([run.label, status, f"{wall:.0f}", f"{peak:.2f}",
                                   str(len(attempts)), hosts]))
    lines += ["", "Peak memory: the largest resident set of a run's training process (and of "
              "the processes it waited for), per attempt.", "", "## Comparison", ""]
    table = study.comparison / OUTPUT_FILES[0]
    if comparison is not None and table.is_file():
        lines += [table.read_text().strip(), ""]
        lines += [f"- {md(note)}" for note in comparison.notes]
        lines += ["", f"Tables, paired statistics and figures: `{study.comparison.name}/`."]
    else:
        lines.append("No run has finished yet.")
    write_text(study.report, "\n".join(lines) + "\n")
    return study.report
