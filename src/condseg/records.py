"""Each record of a run read and written in one place, beside its path in :mod:`condseg.layout`.

- ``config.yaml``: :func:`write_config`; :func:`read_config` (validated as a run's),
  :func:`read_config_record` (as recorded, for compare).
- ``result.json``: :func:`write_result`; :func:`read_result`.
- ``summary.json`` and ``per_image.csv`` (one evaluation, both at once):
  :func:`write_evaluation`; :func:`read_evaluation`.
- ``cv_summary.json``: :func:`write_cv_summary`; :func:`read_cv_summary`; ``cv_runs.csv``
  (written for people): :func:`write_cv_runs`.
- nnU-Net v2's records (written by nnU-Net, read by compare): a fold's
  ``validation/summary.json`` (:func:`nnunet_summary_path`, :func:`read_nnunet_summary`) and the
  ``dataset.json`` it copies into a trainer folder (:func:`read_nnunet_dataset`).
- ``metrics.csv`` (a stage's epochs): :mod:`condseg.epoch_log` (core: it merges Lightning's
  logs), ``write_epoch_log`` and ``read_epochs``.

Writers stage beside the destination (:mod:`condseg.files`); readers of condseg's own records
go through :func:`condseg.files.read_text` / :func:`~condseg.files.read_json`, so a damaged file
is one line naming it and what to do (the caller's ``error`` and ``todo``: what to do depends on
who reads it). What each record means belongs to its writer; here is how it is stored.

Missing values follow the one rule of :mod:`condseg.tables` (an empty cell; ``null`` in JSON).
Columns are read as the header names them (``name`` first, then one per metric, whatever
metrics a later version adds), never from a fixed list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from condseg.config import ConfigError, RunConfig, load_config, read_yaml
from condseg.errors import first_line
from condseg.files import read_json, read_text, write_text
from condseg.layout import CVDir, EvalDir, JobDir, RunDir, StageDir
from condseg.tables import Score, read_table, table_text

__all__ = [
    "EvaluationRecord", "nnunet_summary_path", "read_config", "read_config_record",
    "read_cv_summary", "read_evaluation", "read_nnunet_dataset", "read_nnunet_summary",
    "read_result", "write_config", "write_cv_runs", "write_cv_summary", "write_evaluation",
    "write_result",
]

# --------------------------------------------------------------------------- evaluation


@dataclass
class EvaluationRecord:
    """One evaluation folder: per-image rows (``name`` + one column per metric, in the file's
    order), the summary of each metric, the protocol it was obtained under and, for K >= 2
    classes, their names (background first; None: binary)."""

    rows: list[dict[str, Any]]
    metrics: dict[str, dict[str, Any]]
    protocol: dict[str, Any]
    classes: tuple[str, ...] | None = None

    def scores(self) -> dict[str, dict[str, Score]]:
        """{image name: {metric: value or None}}."""
        return {row["name"]: {k: v for k, v in row.items() if k != "name"} for row in self.rows}


def write_evaluation(
    folder: EvalDir, columns: Sequence[str], rows: Iterable[Mapping[str, Any]],
    metrics: Mapping[str, Any], protocol: Mapping[str, Any],
    classes: Sequence[str] | None = None,
) -> tuple[Path, Path]:
    """``per_image.csv`` (``name`` + ``columns``; other keys of a row left out) and
    ``summary.json`` (the protocol, ``classes`` for K >= 2 (a binary summary has no such key)
    and, per metric — per-class ones ``<metric>/<class>`` included —, its summary)."""
    folder.path.mkdir(parents=True, exist_ok=True)
    write_text(folder.per_image, table_text(["name", *columns], rows))
    summary: dict[str, Any] = {"protocol": dict(protocol)}
    if classes is not None:
        summary["classes"] = list(classes)
    summary["metrics"] = dict(metrics)
    write_text(folder.summary, json.dumps(summary, indent=2) + "\n")
    return folder.per_image, folder.summary


def read_evaluation(folder: EvalDir, error: type[Exception], todo: str) -> EvaluationRecord:
    """What :func:`write_evaluation` wrote; anything else is ``error`` naming the file."""
    recorded = read_json(folder.summary, dict, error, todo)
    if not all(isinstance(recorded.get(key), dict) for key in ("metrics", "protocol")):
        raise error(f"{folder.summary} is damaged: it has no metrics and protocol as "
                    f"evaluate writes them; {todo}")
    classes = recorded.get("classes")
    if classes is not None and not (isinstance(classes, list) and len(classes) >= 2
                                    and all(isinstance(name, str) for name in classes)):
        raise error(f"{folder.summary} is damaged: its classes are not a list of two or more "
                    f"names as evaluate writes them; {todo}")
    try:
        rows = read_table(folder.per_image, "name", error, todo)
    except FileNotFoundError:
        raise error(f"{folder.path} is damaged: it has {folder.summary.name} but no "
                    f"{folder.per_image.name}; {todo}") from None
    return EvaluationRecord(rows=rows, metrics=recorded["metrics"],
                            protocol=recorded["protocol"],
                            classes=tuple(classes) if classes is not None else None)


# --------------------------------------------------------------------------- a stage's result


def write_result(stage: StageDir, record: Mapping[str, Any]) -> Path:
    """``result.json``: written last, it marks the stage as finished."""
    return write_text(stage.result, json.dumps(dict(record), indent=2))


def read_result(stage: StageDir, error: type[Exception], todo: str) -> dict[str, Any]:
    """The object :func:`write_result` wrote (its keys are the writer's:
    :class:`condseg.training.results.StageResult`)."""
    return read_json(stage.result, dict, error, todo)


# --------------------------------------------------------------------------- configuration


def write_config(folder: RunDir | CVDir | JobDir, config: RunConfig) -> Path:
    """``config.yaml``: the configuration a run, cross-validation or study job starts from."""
    return write_text(folder.config, config.to_yaml())


def read_config(folder: RunDir | CVDir | JobDir) -> RunConfig:
    """The recorded configuration, validated as a run's (a damaged one: ``ConfigError``)."""
    return load_config(folder.config)


def read_config_record(folder: RunDir, error: type[Exception], todo: str) -> dict[str, Any]:
    """The recorded configuration as written, not validated: a run of an older version is
    still read for what it holds (compare)."""
    path = folder.config
    text = read_text(path, error, todo)
    try:
        value = read_yaml(text, str(path))
    except ConfigError as exc:
        why = first_line(exc).removeprefix(f"{path}: ")
        raise error(f"{path} is damaged: {why}; {todo}") from None
    if not isinstance(value, dict):
        raise error(f"{path} is damaged: it is not a mapping as training writes it; {todo}")
    return value


# --------------------------------------------------------------------------- cross-validation


def write_cv_runs(cv: CVDir, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """``cv_runs.csv``: one row per run (``columns``: run, fold, seed and the metrics)."""
    return write_text(cv.runs_table, table_text(columns, rows))


def write_cv_summary(cv: CVDir, record: Mapping[str, Any]) -> Path:
    """``cv_summary.json``: the runs, their files and per metric the mean and std over runs."""
    return write_text(cv.summary, json.dumps(dict(record), indent=2) + "\n")


def read_cv_summary(cv: CVDir, error: type[Exception], todo: str) -> dict[str, Any]:
    """The metrics of what :func:`write_cv_summary` wrote."""
    metrics = read_json(cv.summary, dict, error, todo).get("metrics")
    if not isinstance(metrics, dict):
        raise error(f"{cv.summary} is damaged: it has no metrics; {todo}")
    return metrics


# --------------------------------------------------------------------------- nnU-Net v2

#: What nnU-Net records of each case and label (Dice and IoU are NaN where the label is absent
#: from both reference and prediction: ``nnunetv2.evaluation.evaluate_predictions``).
NNUNET_COUNTS = ("TP", "FP", "FN")


def nnunet_summary_path(fold: Path) -> Path:
    """Where ``nnUNetv2_train`` writes a fold's validation scores (``--val`` rewrites it)."""
    return fold / "validation" / "summary.json"


def read_nnunet_summary(path: Path, error: type[Exception], todo: str) -> dict[str, Any]:
    """A ``summary.json`` as nnU-Net's ``compute_metrics_on_folder`` writes it: ``metric_per_case``
    (per case ``reference_file``, ``prediction_file`` and ``metrics``: per label key, ``"1"`` or
    a region ``"(1, 2)"``, Dice, IoU, TP, FP, FN, ...), ``mean`` and ``foreground_mean``. Only
    what compare reads is checked; anything else is ``error`` naming the file."""
    value = read_json(path, dict, error, todo)
    cases = value.get("metric_per_case")
    if not isinstance(cases, list) or not cases or not all(map(_is_nnunet_case, cases)):
        raise error(f"{path} is damaged: its metric_per_case is not a list of cases with "
                    f"files and per-label Dice, IoU, {', '.join(NNUNET_COUNTS)} as nnU-Net "
                    f"writes them; {todo}")
    return value


def _is_nnunet_case(case: object) -> bool:
    return (isinstance(case, dict) and isinstance(case.get("reference_file"), str)
            and isinstance(case.get("prediction_file"), str)
            and isinstance(metrics := case.get("metrics"), dict) and bool(metrics)
            and all(isinstance(m, dict) and all(
                isinstance(m.get(k), int | float) and not isinstance(m.get(k), bool)
                for k in ("Dice", "IoU", *NNUNET_COUNTS)) for m in metrics.values()))


def read_nnunet_dataset(path: Path, error: type[Exception], todo: str) -> dict[str, Any]:
    """nnU-Net's ``dataset.json`` (``labels``: name -> label id, or a region's list of ids)."""
    return read_json(path, dict, error, todo)
