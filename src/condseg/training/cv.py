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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from condseg.config import RunConfig, validated
from condseg.data.check import require_prepared
from condseg.errors import CrossValidationError, refuse_existing
from condseg.evaluation.evaluate import evaluate, print_table, read_results
from condseg.evaluation.metrics import summarize
from condseg.evaluation.names import percent
from condseg.interrupt import Interrupted
from condseg.layout import CVDir, DatasetDir, EvalDir
from condseg.models.ensemble import save_ensemble
from condseg.models.model_file import load_model
from condseg.outputs import claim
from condseg.records import (
    read_config,
    read_cv_summary,
    write_config,
    write_cv_runs,
    write_cv_summary,
)
from condseg.training.classes import with_dataset_classes
from condseg.training.logs import RunLog
from condseg.training.results import TrainResult
from condseg.training.run import train

_SHOWN = ("dice", "iou", "recall", "precision")  # the printed columns (paper's Table 1)


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
    return DatasetDir.fold_splits(fold)


def fold_overrides(fold: int) -> list[str]:
    """``key=value`` overrides that make a run train on fold ``fold`` (``train --fold``)."""
    train_split, val_split = fold_splits(fold)
    return [f"data.train_split={train_split}", f"data.val_split={val_split}"]


def list_folds(root: str | Path) -> list[int]:
    """The folds of a dataset: k for each ``ROOT/folds/<k>/`` with train.txt and val.txt."""
    return DatasetDir(Path(root)).fold_numbers()


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
    config = with_dataset_classes(config, root)  # K recorded in CV/config.yaml too
    plan = _plan(config, root, folds, seeds)
    cv = CVDir(Path(out_dir))
    complete = folds is None
    test = _test_evaluation(cv, config, root)
    finished = _finished(cv, config, plan, test)
    if complete and finished and not overwrite:
        _write_config(cv, config)  # refuses a folder of another configuration
        console.print(f"{cv.path} is finished: {cv.summary}, {cv.ensemble}; "
                      "--overwrite aggregates the runs again", highlight=False)
        summary = _recorded_metrics(cv)  # written by an earlier call
        return CVResult(cv.path, [], summary, cv.ensemble, test.path if test else None)
    if complete:
        test_dir = cv.evaluation(config.data.test_split)
        refuse_existing([cv.runs_table, cv.summary, cv.ensemble, test_dir.per_image,
                         test_dir.summary], overwrite)
    with _held(cv, folds, seeds):  # a share (--fold) leaves the folder to other jobs
        _write_config(cv, config)
        if complete:  # jobs sharing the folds log into their own runs' train.log only
            log.attach(cv.log)
        runs = [_run(name, fold, seed, config, root, cv, resume, console)
                for name, fold, seed in plan]
        return _finish(config, cv, runs, root, complete, console)


def _test_evaluation(cv: CVDir, config: RunConfig, root: Path) -> EvalDir | None:
    """Where the ensemble's test evaluation goes; None when the dataset has no test split."""
    test_split = config.data.test_split
    return cv.evaluation(test_split) if DatasetDir(root).has_split(test_split) else None


@contextmanager
def _held(
    cv: CVDir, folds: Sequence[int] | None, seeds: Sequence[int] | None
) -> Iterator[None]:
    """The folder, locked while this process trains every run in it (one job's share of
    folds locks only its runs' folders, so that the jobs run at once); an interrupted
    cross-validation says how to continue it."""
    keep = claim(cv.path, keep=lambda path: CVDir(path).has_progress())
    with keep if folds is None else nullcontext():
        try:
            yield
        except Interrupted as stop:
            if cv.has_progress():
                chosen = "".join(f" --fold {k}" for k in folds or ())
                chosen += f" --seeds {','.join(map(str, seeds))}" if seeds else ""
                stop.resume = f"condseg cv --out {cv.path} --resume{chosen}"
            raise


def _finish(
    config: RunConfig, cv: CVDir, runs: list[CVRun], root: Path, complete: bool,
    console: Console,
) -> CVResult:
    """Report a partial share, or aggregate, ensemble and evaluate on the test split."""
    result = CVResult(cv.path, runs)
    if not complete:
        console.print(f"trained {', '.join(r.name for r in runs)} in {cv.path}; when every run "
                      f"has finished, run the same command with --out {cv.path} and without "
                      "--fold to aggregate them and build the ensemble", highlight=False)
        return result
    result.summary = _aggregate(cv, runs, console)
    members = [r.training.model_file for r in runs]
    metrics = {name: stats["mean"] for name, stats in result.summary.items()}
    result.ensemble_file = save_ensemble(cv.ensemble, members, metrics=metrics,
                                         config=config, overwrite=True)
    console.print(f"ensemble of {len(members)} models: {result.ensemble_file}", highlight=False)
    test = _test_evaluation(cv, config, root)
    if test is not None:
        evaluation = evaluate(load_model(result.ensemble_file), root,
                              split=config.data.test_split, out_dir=test.path,
                              batch_size=config.data.batch_size,
                              workers=config.data.num_workers, overwrite=True,
                              console=console)
        print_table(evaluation, console)
        result.test_dir = test.path
    return result


def _finished(
    cv: CVDir, config: RunConfig, plan: list[tuple[str, int | None, int]],
    test: EvalDir | None,
) -> bool:
    """Whether every planned run has finished its stages and the aggregate, the ensemble and
    (with a test split) its test evaluation are written."""
    outputs = [cv.runs_table, cv.summary, cv.ensemble]
    if test is not None:
        outputs.append(test.summary)
    runs = [cv.run(name).stage(stage).result
            for name, _, _ in plan for stage in config.stages_to_train()]
    return all(path.is_file() for path in [*outputs, *runs])


def check_folds(root: Path, folds: Sequence[int] | None) -> list[int]:
    """The folds of the dataset at ``root``, refusing any of ``folds`` it does not have (``cv
    --fold``, ``train --fold``) before anything is trained."""
    require_prepared(root, [])  # a missing folder is not "a dataset without folds"
    dataset = DatasetDir(root)
    available = dataset.fold_numbers()
    missing = [k for k in folds if k not in available] if folds is not None else []
    if missing or (folds is not None and not folds):
        raise CrossValidationError(
            f"{root} has no fold {missing or folds}; its folds are {available or 'none'} "
            f"({dataset.folds}/<k>/train.txt and val.txt)")
    return available


def _plan(
    config: RunConfig, root: Path, folds: Sequence[int] | None, seeds: Sequence[int] | None
) -> list[tuple[str, int | None, int]]:
    """(run name, fold or None, seed) of every run asked for."""
    available = check_folds(root, folds)
    dataset = DatasetDir(root)
    chosen: list[int | None] = list(folds if folds is not None else available) or [None]
    if chosen == [None] and not seeds:
        raise CrossValidationError(
            f"{root} has no folds ({dataset.folds}/<k>/train.txt and val.txt): prepare them "
            "with `condseg data prepare folder IMAGES MASKS OUT --folds 5`, or give seeds "
            "(--seeds 0,1,2) for a multi-seed run on its train/val split")
    seed_list = list(dict.fromkeys(seeds)) if seeds else [config.seed]
    for seed in seed_list:  # every run's seed checked now, not when its turn comes
        validated(RunConfig, {**config.model_dump(mode="json"), "seed": seed}, f"seed {seed}")

    def name(fold: int | None, seed: int) -> str:
        parts = [f"fold{fold}"] if fold is not None else []
        return "-".join([*parts, f"seed{seed}"] if seeds else parts)

    return [(name(fold, seed), fold, seed) for fold in dict.fromkeys(chosen) for seed in seed_list]


def _recorded_metrics(cv: CVDir) -> dict[str, Any]:
    """The metrics of the summary an earlier call wrote."""
    todo = "move it away and run the cross-validation again to aggregate its runs anew"
    return read_cv_summary(cv, CrossValidationError, todo)


def _write_config(cv: CVDir, config: RunConfig) -> None:
    """Record the starting configuration; a folder started with another one is refused."""
    if cv.config.is_file():
        if read_config(cv).model_dump(mode="json") != config.model_dump(mode="json"):
            raise CrossValidationError(
                f"{cv.path} holds a cross-validation of another configuration; choose a new "
                f"--out, or continue it with its own: --config {cv.config}")
        return
    cv.path.mkdir(parents=True, exist_ok=True)
    write_config(cv, config)


def _run(
    name: str, fold: int | None, seed: int, config: RunConfig, root: Path, cv: CVDir,
    resume: bool, console: Console,
) -> CVRun:
    """Train (or reuse) one run and evaluate its final model on its validation split."""
    data = config.data
    if fold is not None:
        train_split, val_split = fold_splits(fold)
        data = data.model_copy(update={"train_split": train_split, "val_split": val_split})
    run_config = config.model_copy(update={"data": data, "seed": seed})
    run = cv.run(name)
    finished = all(run.stage(stage).is_finished() for stage in run_config.stages_to_train())
    console.rule(f"{name}: {'finished' if finished else 'training'}")
    training = train(run_config, root, run.path, resume=resume or finished, console=console)
    out = run.evaluation("val")
    evaluation = (read_results(out.path) if out.is_complete()  # evaluated by an earlier call
                  else evaluate(load_model(training.model_file), root, split=data.val_split,
                                out_dir=out.path, batch_size=data.batch_size,
                                workers=data.num_workers, overwrite=True, console=console))
    return CVRun(name, fold, seed, training, evaluation.means, evaluation.execution)


def _aggregate(cv: CVDir, runs: list[CVRun], console: Console) -> dict[str, dict[str, Any]]:
    """Write the per-run table and the mean ± std over runs (population std, as evaluation's
    summaries); print both."""
    rows = [{"run": r.name, "fold": r.fold, "seed": r.seed, **r.metrics} for r in runs]
    # The evaluations' own columns: METRIC_NAMES, or a K-class evaluation's class_metric_names.
    names = list(dict.fromkeys(name for r in runs for name in r.metrics))
    summary = summarize(rows, names)
    write_cv_runs(cv, ["run", "fold", "seed", *names], rows)
    # Paths relative to the cross-validation folder, so that it can be moved or copied whole.
    record = {
        "runs": [{"name": r.name, "fold": r.fold, "seed": r.seed,
                  "model_file": str(r.training.model_file.relative_to(cv.path)),
                  "evaluation": cv.run(r.name).evaluation("val").path.relative_to(
                      cv.path).as_posix()} for r in runs],
        "metrics": summary,
        "ensemble": cv.ensemble.name,
    }
    write_cv_summary(cv, record)
    executions = ", ".join(sorted({r.execution for r in runs}))
    table = Table(title=f"validation results of {len(runs)} runs (percent; {executions})")
    table.add_column("run")
    for metric in _SHOWN:
        table.add_column(metric, justify="right")
    for r in runs:
        table.add_row(r.name, *(percent(r.metrics[m]) for m in _SHOWN))
    table.add_row("mean ± std", *(f"{percent(summary[m]['mean'])} ± "
                                  f"{percent(summary[m]['std'])}" for m in _SHOWN))
    console.print(table)
    console.print(f"wrote {cv.runs_table} and {cv.summary}", highlight=False)
    return summary
