"""``condseg study``: resolve what every method receives, train every (method, seed or fold)
run as a job, compare the runs, and write the report.

A study folder is continued by running the study again (``condseg study --out STUDY``): finished
runs are skipped, interrupted ones continue from their checkpoints, failed ones are tried again.
Methods and seeds may be added to a study; its data, folds, protocol, budget and overrides
may not change (that is another study). What a method received is resolved once, when it
joins the study, and kept in ``protocol.json``: a continued run never silently changes.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from condseg.data.check import require_prepared
from condseg.errors import StudyError
from condseg.evaluation.compare import Comparison, compare
from condseg.files import write_text
from condseg.interrupt import Interrupted
from condseg.layout import DatasetDir, StudyDir
from condseg.outputs import claim, entries
from condseg.records import write_config
from condseg.study.launch import Outcome, job_gpus, job_threads, launch
from condseg.study.protocol import MethodProtocol, read_protocols, resolve
from condseg.study.report import cost_columns, print_protocol, write_report
from condseg.study.runs import StudyRun, plan_runs
from condseg.study.spec import StudySpec, read_study
from condseg.training.logs import RunLog
from condseg.training.start import check_data

#: The curves' axis under each kind of budget: the currency the methods were given.
_CURVES_X = {None: "epoch", "flops": "tflop", "time": "time"}


@dataclass
class StudyResult:
    study: StudyDir
    protocols: list[MethodProtocol]
    runs: list[StudyRun]
    outcomes: list[Outcome] = field(default_factory=list)  # the jobs of this call
    comparison: Comparison | None = None

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


def run_study(
    spec: StudySpec, out: str | Path, *, console: Console | None = None, dry_run: bool = False
) -> StudyResult:
    """Run (or continue) the study ``spec`` in ``out``; with ``dry_run`` only resolve and print
    what every method receives and which runs there are."""
    console = console or Console(soft_wrap=True)
    study = StudyDir(Path(out))
    data = _dataset_root(spec)
    spec, previous = _continued(study, spec.model_copy(update={"data": data}))
    if spec.budget.compute == "time" and spec.launcher.name == "slurm":
        raise StudyError("a time budget is calibrated on the machine the runs train on, and "
                         "SLURM's nodes are not this one; give the budget in FLOPs "
                         "(--budget flops=N), or run the study with --launcher local on a node")
    if spec.launcher.name == "slurm" and shutil.which("sbatch") is None:
        raise StudyError("--launcher slurm needs SLURM's sbatch, which is not on this machine's "
                         "PATH; run the study on a node of the cluster, or use --launcher local")
    runs = plan_runs(spec, study)
    threads, gpus = job_threads(spec.launcher, len(runs)), job_gpus(spec.launcher, len(runs))
    protocols = [previous.get(entry.name) or resolve(spec, entry, threads, gpus)
                 for entry in spec.methods]
    by_name = {p.name: p for p in protocols}
    for run in runs:  # each run's configuration valid (its seeds) before anything is written
        run.config(by_name[run.method], data)
    print_protocol(spec, protocols, console)
    result = StudyResult(study, protocols, runs)
    if dry_run:
        console.print(f"{len(runs)} run(s): {', '.join(r.label for r in runs)} (dry run: "
                      "nothing started)", highlight=False)
        return result
    todo = [r for r in runs if not r.is_finished(by_name[r.method].config().stages_to_train())]
    if todo:  # the dataset checked once, not by every run
        check_data(data, todo[0].config(by_name[todo[0].method], data), console)
    with claim(study.path, keep=lambda _: True), RunLog(console) as log:
        log.attach(study.log)
        write_text(study.spec, spec.to_yaml())  # whole or not at all: a continuation reads them
        write_text(study.protocol, json.dumps([p.to_json() for p in protocols], indent=2) + "\n")
        console.print(f"{len(runs)} run(s): {len(runs) - len(todo)} finished, {len(todo)} to "
                      "train", highlight=False)
        for run in todo:
            _write_start(run, by_name[run.method], data)
        started = time.time()
        try:
            result.outcomes = launch(todo, spec.launcher, data, console)
        except Interrupted as stop:
            stop.resume = f"condseg study --out {study.path}"
            raise
        finished = [r for r in runs if r not in todo or
                    r.is_finished(by_name[r.method].config().stages_to_train())]
        if finished:
            result.comparison = compare(
                [r.run.path for r in finished], labels=[r.method for r in finished],
                out_dir=study.comparison, figure_dir=study.comparison, pool=True,
                overwrite=True, console=console,
                extra=cost_columns(protocols, finished) if spec.budget.compute else None,
                curves_x=_CURVES_X[spec.budget.compute])
        write_report(study, spec, protocols, runs, result.comparison, time.time() - started)
        console.print(f"wrote {study.report}", highlight=False, markup=False)
    return result


def continue_source(out: Path | None) -> Path | None:
    """The study file a study folder was run with, when there is one (continuing it)."""
    spec = StudyDir(out).spec if out is not None else None
    return spec if spec is not None and spec.is_file() else None


def _dataset_root(spec: StudySpec) -> Path:
    """The study's prepared dataset, with the folds it asks for."""
    if spec.data is None:
        raise StudyError("no dataset: pass --data DIR or set data: in the study file")
    root = spec.data.resolve()
    require_prepared(root, [])  # a missing folder is not "a dataset without folds"
    if spec.folds:
        have = DatasetDir(root).fold_numbers()
        missing = [k for k in range(spec.folds) if k not in have]
        if missing:
            raise StudyError(
                f"--folds {spec.folds}: {root} has no fold {missing} (its folds: "
                f"{have or 'none'}); prepare them with `condseg data prepare folder IMAGES "
                f"MASKS OUT --folds {spec.folds}`")
    require_prepared(root, list(DatasetDir.fold_splits(0)) if spec.folds else ["train", "val"])
    return root


def _continued(
    study: StudyDir, spec: StudySpec
) -> tuple[StudySpec, dict[str, MethodProtocol]]:
    """The study to run in ``study``: ``spec`` itself in a new folder; in a study folder, its
    methods and seeds with those of ``spec`` added, and what its methods received (reused).
    Another experiment is refused."""
    if not study.spec.is_file():
        if study.path.is_dir() and entries(study.path):
            raise StudyError(f"{study.path} is not empty and holds no study ({study.spec.name}); "
                             "choose a new --out")
        return spec, {}
    before = read_study(study.spec, {})
    changed = _changed(before.experiment(), spec.experiment())
    if spec.folds and (before.seeds is None) != (spec.seeds is None):
        changed.append("seeds (a k-fold study's runs are named by fold alone without them)")
    if changed:
        raise StudyError(
            f"{study.path} holds a study with other {', '.join(changed)}; continue it as it is "
            f"(`condseg study --out {study.path}`, which may add methods and seeds), or choose "
            "a new --out")
    known = {e.name: e for e in before.methods}
    for entry in spec.methods:
        if entry.name in known and known[entry.name] != entry:
            raise StudyError(
                f"method {entry.name} of {study.path} was run as {known[entry.name]!r}; give "
                "the new one another name ({name: NEW, method: ..., overrides: [...]})")
    methods = [*before.methods, *(e for e in spec.methods if e.name not in known)]
    seeds = None if before.seeds is None and spec.seeds is None else list(dict.fromkeys(
        [*before.seed_list, *spec.seed_list]))
    merged = spec.model_copy(update={"methods": methods, "seeds": seeds})
    if not study.protocol.is_file():
        return merged, {}
    return merged, read_protocols(study.protocol, merged)


def _changed(before: dict, after: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(before) | set(after))
    found = []
    for key in keys:
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _changed(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}")
    return found


def _write_start(run: StudyRun, protocol: MethodProtocol, data: Path) -> None:
    """The configuration a run not yet started starts from (its job folder's config.yaml)."""
    if not run.run.is_run():
        run.job.path.mkdir(parents=True, exist_ok=True)
        write_config(run.job, run.config(protocol, data))
