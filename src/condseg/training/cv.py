"""Cross-validation and multi-seed runs: one ordinary training run per fold (and seed), each
evaluated on its own validation split, then the mean ± std over runs and an ensemble model.

A dataset prepared with k folds holds ``ROOT/folds/<k>/train.txt`` and ``val.txt``; the run of
fold k is :func:`~condseg.training.run.train` with ``data.train_split=folds/<k>/train`` and
``data.val_split=folds/<k>/val``, nothing else. Layout of a cross-validation folder::

    CV/config.yaml                the configuration every run starts from
    CV/<run>/                     an ordinary run directory per fold/seed (fold0, seed1,
                                  fold0-seed1, ...), plus evaluation/val/ (its validation split)
    CV/cv_runs.csv                one row per run: the means of every metric on its val split
    CV/cv_summary.json            per metric the mean and std over runs; the runs and files
    CV/ensemble.safetensors       the ensemble of the runs' final models (mean probability)
    CV/evaluation/test/           the ensemble on the test split, when the dataset has one
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from condseg.config import RunConfig, load_config
from condseg.data.check import require_prepared
from condseg.errors import CondsegError, refuse_existing
from condseg.evaluation.evaluate import PER_IMAGE_CSV, SUMMARY_JSON, evaluate, print_table
from condseg.evaluation.metrics import METRIC_NAMES, summarize
from condseg.interrupt import Interrupted
from condseg.models.ensemble import save_ensemble
from condseg.models.model_file import load_model
from condseg.outputs import claim
from condseg.training.logs import RunLog
from condseg.training.run import TrainResult, train

FOLDS_DIR = "folds"
RUNS_CSV = "cv_runs.csv"
SUMMARY = "cv_summary.json"
ENSEMBLE = "ensemble.safetensors"
_SHOWN = ("dice", "iou", "recall", "precision")  # the printed columns (paper's Table 1)


class CrossValidationError(CondsegError):
    """A cross-validation that cannot run as asked; the message says what to do."""


@dataclass
class CVRun:
    """One training run of the cross-validation and its validation means per metric."""

    name: str
    fold: int | None
    seed: int
    training: TrainResult
    metrics: dict[str, float | None] = field(default_factory=dict)
    execution: str = ""  # device and precision of its validation evaluation, e.g. "cpu float32"


@dataclass
class CVResult:
    cv_dir: Path
    runs: list[CVRun]  # trained or reused in this call (none when it was finished already)
    summary: dict[str, dict[str, Any]] | None = None  # None when only some folds were run
    ensemble_file: Path | None = None
    test_dir: Path | None = None


def fold_splits(fold: int) -> tuple[str, str]:
    """The train and val split names of fold ``fold`` (files under ``ROOT/folds/<fold>/``)."""
    return f"{FOLDS_DIR}/{fold}/train", f"{FOLDS_DIR}/{fold}/val"


def fold_overrides(fold: int) -> list[str]:
    """``key=value`` overrides that make a run train on fold ``fold`` (``train --fold``)."""
    train_split, val_split = fold_splits(fold)
    return [f"data.train_split={train_split}", f"data.val_split={val_split}"]


def list_folds(root: str | Path) -> list[int]:
    """The folds of a dataset: k for each ``ROOT/folds/<k>/`` with train.txt and val.txt."""
    folder = Path(root) / FOLDS_DIR
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()
                  and (p / "train.txt").is_file() and (p / "val.txt").is_file())


def cross_validate(
    config: RunConfig,
    data_root: str | Path | None = None,
    out_dir: str | Path = "runs/cv",
    *,
    folds: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
) -> CVResult:
    """Train one run per fold of the dataset (all, or only ``folds``: one job's share) and per
    seed of ``seeds`` (default: the config's), each evaluated on its validation split.

    A dataset without folds needs ``seeds`` (a multi-seed run on its train/val split). Finished
    runs are kept and reused; an unfinished one continues only with ``resume``. When every fold
    is asked for (``folds`` None), the runs are aggregated and ensembled; those outputs are not
    replaced without ``overwrite``. A finished cross-validation asked again (every run, the
    aggregate and the ensemble written) is said to be finished and returned as it is. What
    ``console`` prints is also written to ``CV/train.log`` (and each run's part to its own
    ``train.log``).
    """
    console = console or Console(soft_wrap=True)
    with RunLog(console) as log:
        return _cross_validate(config, data_root, out_dir, folds, seeds, resume, overwrite,
                               console, log)


def _cross_validate(
    config: RunConfig, data_root: str | Path | None, out_dir: str | Path,
    folds: Sequence[int] | None, seeds: Sequence[int] | None, resume: bool, overwrite: bool,
    console: Console, log: RunLog,
) -> CVResult:
    root = Path(data_root) if data_root is not None else config.data.root
    if root is None:
        raise CrossValidationError("no dataset given: pass the data root (--data DIR)")
    root = root.resolve()  # the same dataset however typed, from any working folder
    # Recorded in CV/config.yaml, so that later calls (one per job) need not repeat --data.
    config = config.model_copy(update={"data": config.data.model_copy(update={"root": root})})
    plan = _plan(config, root, folds, seeds)
    cv_dir = Path(out_dir)
    complete = folds is None
    test_split = config.data.test_split
    test_dir = cv_dir / "evaluation" / test_split
    has_test = (root / f"{test_split}.txt").is_file()
    finished = _finished(cv_dir, config, plan, test_dir if has_test else None)
    if complete and finished and not overwrite:
        _write_config(cv_dir, config)  # refuses a folder of another configuration
        console.print(f"{cv_dir} is finished: {cv_dir / SUMMARY}, {cv_dir / ENSEMBLE}; "
                      "--overwrite aggregates the runs again", highlight=False)
        summary = json.loads((cv_dir / SUMMARY).read_text())["metrics"]
        return CVResult(cv_dir, [], summary, cv_dir / ENSEMBLE, test_dir if has_test else None)
    if complete:
        refuse_existing([cv_dir / RUNS_CSV, cv_dir / SUMMARY, cv_dir / ENSEMBLE,
                         test_dir / PER_IMAGE_CSV, test_dir / SUMMARY_JSON], overwrite)
    with _held(cv_dir, folds, seeds):  # a share (--fold) leaves the folder to other jobs
        _write_config(cv_dir, config)
        if complete:  # jobs sharing the folds log into their own runs' train.log only
            log.attach(cv_dir)
        runs = [_run(name, fold, seed, config, root, cv_dir, resume, console)
                for name, fold, seed in plan]
        return _finish(config, cv_dir, runs, root, complete, console)


def _has_progress(cv_dir: Path) -> bool:
    """Whether a run of the cross-validation wrote a checkpoint or finished."""
    return any(cv_dir.glob("*/*/checkpoints/*.ckpt")) or any(cv_dir.glob("*/*/result.json"))


@contextmanager
def _held(
    cv_dir: Path, folds: Sequence[int] | None, seeds: Sequence[int] | None
) -> Iterator[None]:
    """The folder, locked while this process trains every run in it (one job's share of
    folds locks only its runs' folders, so that the jobs run at once); an interrupted
    cross-validation says how to continue it."""
    with claim(cv_dir, keep=_has_progress) if folds is None else nullcontext():
        try:
            yield
        except Interrupted as stop:
            if _has_progress(cv_dir):
                chosen = "".join(f" --fold {k}" for k in folds or ())
                chosen += f" --seeds {','.join(map(str, seeds))}" if seeds else ""
                stop.resume = f"condseg cv --out {cv_dir} --resume{chosen}"
            raise


def _finish(
    config: RunConfig, cv_dir: Path, runs: list[CVRun], root: Path, complete: bool,
    console: Console,
) -> CVResult:
    """Report a partial share, or aggregate, ensemble and evaluate on the test split."""
    test_split = config.data.test_split
    test_dir = cv_dir / "evaluation" / test_split
    result = CVResult(cv_dir, runs)
    if not complete:
        console.print(f"trained {', '.join(r.name for r in runs)} in {cv_dir}; when every run "
                      f"has finished, run the same command with --out {cv_dir} and without "
                      "--fold to aggregate them and build the ensemble", highlight=False)
        return result
    result.summary = _aggregate(cv_dir, runs, console)
    members = [r.training.model_file for r in runs]
    metrics = {name: stats["mean"] for name, stats in result.summary.items()}
    result.ensemble_file = save_ensemble(cv_dir / ENSEMBLE, members, metrics=metrics,
                                         config=config, overwrite=True)
    console.print(f"ensemble of {len(members)} models: {result.ensemble_file}", highlight=False)
    if (root / f"{test_split}.txt").is_file():
        evaluation = evaluate(load_model(result.ensemble_file), root, split=test_split,
                              out_dir=test_dir, batch_size=config.data.batch_size,
                              workers=config.data.num_workers, overwrite=True,
                              console=console)
        print_table(evaluation, console)
        result.test_dir = test_dir
    return result


def _finished(
    cv_dir: Path, config: RunConfig, plan: list[tuple[str, int | None, int]],
    test_dir: Path | None,
) -> bool:
    """Whether every planned run has finished its stages and the aggregate, the ensemble and
    (with a test split) its test evaluation are written."""
    outputs = [cv_dir / RUNS_CSV, cv_dir / SUMMARY, cv_dir / ENSEMBLE]
    if test_dir is not None:
        outputs.append(test_dir / SUMMARY_JSON)
    runs = [cv_dir / name / stage / "result.json"
            for name, _, _ in plan for stage in config.stages_to_train()]
    return all(path.is_file() for path in [*outputs, *runs])


def _plan(
    config: RunConfig, root: Path, folds: Sequence[int] | None, seeds: Sequence[int] | None
) -> list[tuple[str, int | None, int]]:
    """(run name, fold or None, seed) of every run asked for."""
    require_prepared(root, [])  # a missing folder is not "a dataset without folds"
    available = list_folds(root)
    if folds is not None:
        missing = [k for k in folds if k not in available]
        if missing or not folds:
            raise CrossValidationError(
                f"{root} has no fold {missing or folds}; its folds are {available or 'none'} "
                f"({root / FOLDS_DIR}/<k>/train.txt and val.txt)")
    chosen: list[int | None] = list(folds if folds is not None else available) or [None]
    if chosen == [None] and not seeds:
        raise CrossValidationError(
            f"{root} has no folds ({root / FOLDS_DIR}/<k>/train.txt and val.txt): prepare them "
            "with `condseg data prepare folder IMAGES MASKS OUT --folds 5`, or give seeds "
            "(--seeds 0,1,2) for a multi-seed run on its train/val split")
    seed_list = list(dict.fromkeys(seeds)) if seeds else [config.seed]

    def name(fold: int | None, seed: int) -> str:
        parts = [f"fold{fold}"] if fold is not None else []
        return "-".join([*parts, f"seed{seed}"] if seeds else parts)

    return [(name(fold, seed), fold, seed) for fold in dict.fromkeys(chosen) for seed in seed_list]


def _write_config(cv_dir: Path, config: RunConfig) -> None:
    """Record the starting configuration; a folder started with another one is refused."""
    path = cv_dir / "config.yaml"
    if path.is_file():
        if load_config(path).model_dump(mode="json") != config.model_dump(mode="json"):
            raise CrossValidationError(
                f"{cv_dir} holds a cross-validation of another configuration; choose a new "
                f"--out, or continue it with its own: --config {path}")
        return
    cv_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_yaml())


def _run(
    name: str, fold: int | None, seed: int, config: RunConfig, root: Path, cv_dir: Path,
    resume: bool, console: Console,
) -> CVRun:
    """Train (or reuse) one run and evaluate its final model on its validation split."""
    data = config.data
    if fold is not None:
        train_split, val_split = fold_splits(fold)
        data = data.model_copy(update={"train_split": train_split, "val_split": val_split})
    run_config = config.model_copy(update={"data": data, "seed": seed})
    run_dir = cv_dir / name
    finished = all((run_dir / stage / "result.json").is_file()
                   for stage in run_config.stages_to_train())
    console.rule(f"{name}: {'finished' if finished else 'training'}")
    training = train(run_config, root, run_dir, resume=resume or finished, console=console)
    out = run_dir / "evaluation" / "val"
    if not (out / SUMMARY_JSON).is_file():
        evaluate(load_model(training.model_file), root, split=data.val_split, out_dir=out,
                 batch_size=data.batch_size, workers=data.num_workers, overwrite=True,
                 console=console)
    summary = json.loads((out / SUMMARY_JSON).read_text())
    execution = summary["protocol"].get("execution") or {}
    return CVRun(name, fold, seed, training,
                 {m: summary["metrics"][m]["mean"] for m in METRIC_NAMES},
                 f"{execution.get('device', '?')} {execution.get('precision', '?')}")


def _aggregate(cv_dir: Path, runs: list[CVRun], console: Console) -> dict[str, dict[str, Any]]:
    """Write the per-run table and the mean ± std over runs (population std, as evaluation's
    summaries); print both."""
    rows = [{"run": r.name, "fold": r.fold, "seed": r.seed, **r.metrics} for r in runs]
    summary = summarize(rows)
    with (cv_dir / RUNS_CSV).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["run", "fold", "seed", *METRIC_NAMES])
        writer.writeheader()
        writer.writerows(rows)
    # Paths relative to the cross-validation folder, so that it can be moved or copied whole.
    record = {
        "runs": [{"name": r.name, "fold": r.fold, "seed": r.seed,
                  "model_file": str(r.training.model_file.relative_to(cv_dir)),
                  "evaluation": f"{r.name}/evaluation/val"} for r in runs],
        "metrics": summary,
        "ensemble": ENSEMBLE,
    }
    (cv_dir / SUMMARY).write_text(json.dumps(record, indent=2) + "\n")
    executions = ", ".join(sorted({r.execution for r in runs}))
    table = Table(title=f"validation results of {len(runs)} runs (percent; {executions})")
    table.add_column("run")
    for metric in _SHOWN:
        table.add_column(metric, justify="right")
    for r in runs:
        table.add_row(r.name, *(_percent(r.metrics[m]) for m in _SHOWN))
    table.add_row("mean ± std", *(f"{_percent(summary[m]['mean'])} ± "
                                  f"{_percent(summary[m]['std'])}" for m in _SHOWN))
    console.print(table)
    console.print(f"wrote {cv_dir / RUNS_CSV} and {cv_dir / SUMMARY}", highlight=False)
    return summary


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"
