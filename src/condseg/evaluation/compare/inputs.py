"""Reading the inputs of a comparison: run folders and evaluation folders (their paths are
:mod:`condseg.layout`'s), each input's label and each evaluation's dataset column, and the notes
about what the inputs hold (validation splits, datasets of one name told apart)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from condseg import records
from condseg.errors import CompareError, InputNotFoundError
from condseg.evaluation.compare.identity import root_of, roots_to_tell_apart
from condseg.evaluation.compare.nnunet import SOURCE, is_fold, is_trainer, read_nnunet
from condseg.evaluation.compare.result import Entry, Evaluation, RunInfo
from condseg.layout import DatasetDir, EvalDir, RunDir, StageDir


def read_evaluation(path: Path) -> Evaluation:
    """Read ``summary.json`` and ``per_image.csv`` of an evaluation folder
    (:func:`condseg.records.read_evaluation`)."""
    folder = EvalDir(path)
    todo = f"rerun `condseg evaluate ... --out {path}` to write it"
    if not folder.per_image.is_file():
        raise InputNotFoundError(f"{folder.per_image} not found; {todo}")
    record = records.read_evaluation(folder, CompareError, todo)
    return Evaluation(path=path, protocol=record.protocol, metrics=record.metrics,
                      per_image=record.scores(), classes=record.classes)


def read_run(path: Path) -> RunInfo:
    """The run's configuration, its finished stages (with a ``result.json``) in training order
and its final stage: the last of them."""
    run = RunDir(path)
    config = records.read_config_record(run, CompareError, "restore it or compare its "
                                        "evaluation folders instead")
    finished = [s for s in stage_names(path, config) if run.stage(s).is_finished()]
    return RunInfo(path=path, config=config, final_stage=finished[-1] if finished else None,
                   stages=tuple(finished))


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
        if p.is_dir() and (StageDir(p).metrics.is_file() or StageDir(p).is_finished())
    )


def read_input(path: Path) -> Entry:
    """An input folder as an unlabelled entry; a run contributes all its evaluations."""
    path = Path(path)
    run, evaluation = RunDir(path), EvalDir(path)
    expected = (f"run folders (with {run.config.name}), evaluation folders (with "
                f"{evaluation.summary.name} and {evaluation.per_image.name}) or nnU-Net "
                "trainer or fold folders")
    if not path.is_dir():
        raise InputNotFoundError(f"{path} not found; give {expected}")
    if is_fold(path) or is_trainer(path):
        return read_nnunet(path)
    if evaluation.is_complete():
        owner = RunDir.of_evaluation(path)
        info = read_run(owner.path) if owner is not None else None
        return Entry(source=path, label="", evaluations=[read_evaluation(path)], run=info)
    if run.is_run():
        info = read_run(path)
        folders = [e.path for e in run.evaluations()]
        if not folders:
            stage = run.stage(info.final_stage or "<stage>")
            data = (info.config.get("data") or {}).get("root") or "DIR"
            raise CompareError(
                f"{path} has no evaluation yet (a run evaluates its final model when all its "
                f"stages have finished); run `condseg evaluate {stage.model_file} --data "
                f"{data} --split SPLIT --out {run.evaluation('SPLIT').path}`"
            )
        return Entry(source=path, label="", evaluations=[read_evaluation(p) for p in folders],
                     run=info)
    raise CompareError(
        f"{path} is neither a run folder ({run.config.name}) nor an evaluation folder "
        f"({evaluation.summary.name} and {evaluation.per_image.name}) nor an nnU-Net trainer "
        "or fold folder (<Trainer>__<Plans>__<configuration>[/fold_<k>])"
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


def assign_labels(
    entries: Sequence[Entry], labels: Sequence[str] | None, pool: bool = False
) -> None:
    """Explicit labels in input order, else method names made unique by their folder name.
    With ``pool``, inputs of one label are runs of one row: labels may repeat and method
    names are kept as they are."""
    if labels:
        if len(labels) != len(entries):
            raise CompareError(
                f"got {len(labels)} labels for {len(entries)} inputs; give one --label per input"
            )
        if not pool and len(set(labels)) != len(labels):
            raise CompareError(f"labels must be unique, got {', '.join(labels)}; or give "
                               "--pool to pool the inputs of one label into one row")
        for entry, label in zip(entries, labels, strict=True):
            entry.label = label
        return
    names = [method_name(e) for e in entries]
    if pool:
        for entry, name in zip(entries, names, strict=True):
            entry.label = name
        return
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


def assign_columns(entries: Sequence[Entry], pool: bool = False) -> tuple[list[str], list[str]]:
    """Name each evaluation's dataset column (data root name / split, plus the resolution
    protocol when the inputs differ in it) and return the columns in order of appearance, and
    notes. With ``pool``, the splits ``folds/<k>/val`` of every fold are one column
    ``folds/*/val``. Different datasets of one name get a column per data root
    (:func:`.identity.roots_to_tell_apart`)."""
    evaluations = [e for entry in entries for e in entry.evaluations]
    with_resolution = len({e.protocol.get("resolution") for e in evaluations}) > 1
    for evaluation in evaluations:
        evaluation.column = column_name(evaluation.protocol, with_resolution, pool)
    notes = []
    for column, tails in roots_to_tell_apart(evaluations).items():
        shown: dict[str, None] = {}  # the new columns, in order, once
        for evaluation in [e for e in evaluations if e.column == column]:
            root = root_of(evaluation)
            evaluation.column = column_name(evaluation.protocol, with_resolution, pool,
                                            tails[root])
            shown[f"{evaluation.column} ({root})"] = None
        notes.append(f"{column} names different datasets, shown apart and never paired or "
                     f"pooled with each other: {', '.join(shown)}")
    columns: list[str] = []
    for entry in entries:
        seen: dict[str, Path] = {}
        for evaluation in entry.evaluations:
            if evaluation.column in seen:
                raise CompareError(
                    f"{entry.source} has two evaluations of {evaluation.column} "
                    f"({seen[evaluation.column]} and {evaluation.path}); give the evaluation "
                    "folder you mean instead"
                )
            seen[evaluation.column] = evaluation.path
            if evaluation.column not in columns:
                columns.append(evaluation.column)
    return columns, notes


def column_name(
    protocol: Mapping[str, Any], with_resolution: bool, every_fold: bool = False,
    root: str | None = None,
) -> str:
    """``<data root name>/<split>`` (``root``: the root as shown instead of its name)."""
    recorded = str(protocol.get("data_root") or "").rstrip("/\\")
    split = str(protocol.get("split", "?"))
    shown = root or Path(recorded).name or "data"
    name = f"{shown}/{DatasetDir.every_fold(split) if every_fold else split}"
    return f"{name} ({protocol.get('resolution', '?')})" if with_resolution else name


def validation_notes(entries: Sequence[Entry], columns: Sequence[str]) -> list[str]:
    """Say which columns are validation splits: the images that selected each model (best val
    mIoU), so their figures are optimistic next to a test split's. nnU-Net's folds did not
    select its final model, which it validates."""
    validation = {e.column for entry in entries for e in entry.evaluations
                  if _is_validation(e, entry.run)}
    return [f"{column}: the validation split, which selected each model (no test split); "
            "its figures are optimistic — report a held-out test split in a paper"
            for column in columns if column in validation]


def _is_validation(evaluation: Evaluation, run: RunInfo | None) -> bool:
    split = str(evaluation.protocol.get("split", ""))
    if evaluation.protocol.get("source") == SOURCE:
        return False
    data = (run.config.get("data") or {}) if run is not None else {}
    return split == data.get("val_split", "val") or split.rsplit("/", 1)[-1] == "val"
