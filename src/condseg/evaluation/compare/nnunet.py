"""nnU-Net v2 result folders as compare inputs, so nnU-Net's own trainers sit in the same table
and paired tests as condseg's runs.

A fold folder (``.../DatasetXXX_Name/<Trainer>__<Plans>__<configuration>/fold_<k>``) is an
evaluation of split ``folds/<k>/val`` read from its ``validation/summary.json``; a trainer
folder is the evaluation of every fold found, pooled as the runs of one method (as ``--pool``
pools condseg's folds: summary figures are the mean ± std over folds, each case scored once by
the fold that validated it). The method is the trainer class and configuration, the classes
come from the ``dataset.json`` nnU-Net copies into the trainer folder (else ``class<id>``).

Per case, per label: Dice and IoU as nnU-Net wrote them (NaN, a label absent from reference and
prediction, is missing as in condseg), recall and precision from its TP, FP, FN by condseg's
rules; ``dice``, ``iou``, ... are the means over the labels present, as condseg's. The dataset
identity is the results' dataset folder, the case names and the reference's voxel counts per
case and label, so only trainers scored on the same cases pair, and never a condseg evaluation
(whose identity digests its mask files).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from condseg import records
from condseg.errors import CompareError
from condseg.evaluation.compare.pool import pooled_evaluation
from condseg.evaluation.compare.result import Entry, Evaluation
from condseg.evaluation.metrics import summarize
from condseg.evaluation.names import TABLE_METRICS

#: The ``source`` of an nnU-Net evaluation's protocol.
SOURCE = "nnU-Net v2 validation"
FOLD = re.compile(r"fold_(\d+)")
#: How nnU-Net names a region's key (a tuple of label ids) in summary.json.
REGION = re.compile(r"\((\d+),?\)|\((\d+(?:, *\d+)+)\)")


def is_trainer(path: Path) -> bool:
    """``<Trainer>__<Plans>__<configuration>`` holding fold folders."""
    return len(path.name.split("__")) == 3 and any(
        FOLD.fullmatch(p.name) for p in path.iterdir() if p.is_dir())


def is_fold(path: Path) -> bool:
    return bool(FOLD.fullmatch(path.name) or path.name == "fold_all") and len(
        path.parent.name.split("__")) == 3


def read_nnunet(path: Path) -> Entry:
    """A fold folder as one evaluation, or a trainer folder as its folds pooled (the folds are
    the entry's runs, which ``--pool`` pools with other inputs of the method)."""
    if is_fold(path):
        return _fold_entry(path)
    folds = sorted((p for p in path.iterdir() if FOLD.fullmatch(p.name)),
                   key=lambda p: int(p.name[5:]))
    done = [p for p in folds if records.nnunet_summary_path(p).is_file()]
    if not done:
        raise CompareError(f"{path} has no fold with {_summary_name(path)}; " + _todo(
            folds[0]))
    read = [_read_fold(p) for p in done]
    folds_read = [evaluation for evaluation, _ in read]
    seen: dict[str, Path] = {}
    for evaluation in folds_read:
        for case in evaluation.per_image:
            if seen.setdefault(case, evaluation.path) != evaluation.path:
                raise CompareError(
                    f"{path}: case {case} is validated by both {seen[case].name} and "
                    f"{evaluation.path.name}, not once as in nnU-Net's cross-validation; give "
                    "the fold folders you mean")
    evaluation = pooled_evaluation(folds_read)
    numbers = [p.name[5:] for p in done]
    split = "folds/*/val" if numbers == [str(k) for k in range(5)] else (
        f"folds/{'+'.join(numbers)}/val")
    evaluation.path, evaluation.protocol = path, {
        **folds_read[0].protocol, "split": split,
        "dataset": _identity(path, {k: v for _, voxels in read for k, v in voxels.items()}),
        "model_digest": _digest("".join(e.protocol["model_digest"] for e in folds_read))}
    runs = [Entry(source=e.path, label="", evaluations=[e]) for e in folds_read]
    return Entry(source=path, label="", evaluations=[evaluation], pooled=runs)


def _fold_entry(fold: Path) -> Entry:
    return Entry(source=fold, label="", evaluations=[_read_fold(fold)[0]])


def _read_fold(fold: Path) -> tuple[Evaluation, dict[str, list[int]]]:
    """The fold's evaluation and the reference's voxels per case and label (its identity)."""
    if fold.name == "fold_all":
        raise CompareError(f"{fold} trains on every case, so its validation scores training "
                           "cases; give the trainer folder or its fold_<k> folders")
    summary = records.nnunet_summary_path(fold)
    if not summary.is_file():
        raise CompareError(f"{fold} has no {_summary_name(fold)}; {_todo(fold)}")
    damaged = "rerun `" + _train_command(fold) + " --val` to write it again"
    recorded = records.read_nnunet_summary(summary, CompareError, damaged)
    trainer = fold.parent
    first = recorded["metric_per_case"][0]["metrics"]
    labels = _labels(summary, first)
    classes = _class_names(trainer, labels)
    rows, reference = {}, {}
    for case in recorded["metric_per_case"]:
        name = _case_name(case["prediction_file"])
        if set(case["metrics"]) != set(first):
            raise CompareError(f"{summary} is damaged: case {name} has other labels than the "
                               f"first; {damaged}")
        scores = [_scores(case["metrics"][key]) for key in labels.values()]
        rows[name] = _row(scores, classes[1:])
        reference[name] = [case["metrics"][key]["FN"] + case["metrics"][key]["TP"]
                           for key in labels.values()]
    names = (*TABLE_METRICS, *(f"{m}/{c}" for m in TABLE_METRICS for c in classes[1:]))
    trainer_class, plans, configuration = trainer.name.split("__")
    method = f"{trainer_class} {configuration}" + (
        f" ({plans})" if plans != "nnUNetPlans" else "")
    protocol = {"method": method, "model": trainer_class, "configuration": configuration,
                "plans": plans, "data_root": str(trainer.parent), "split":
                f"folds/{fold.name[5:]}/val", "resolution": "original",
                "source": SOURCE, "dataset": _identity(trainer, reference),
                "model_digest": _digest(json.dumps(recorded, sort_keys=True))}
    return Evaluation(path=fold, protocol=protocol, metrics=summarize(rows.values(), names),
                      per_image=rows, classes=classes), reference


def _labels(summary: Path, metrics: Mapping[str, Any]) -> dict[int, str]:
    """Label id -> its key in summary.json, in id order; a region of one label is that label,
    a region of several is refused (its Dice is not a class's)."""
    labels: dict[int, str] = {}
    for key in metrics:
        if key == "0":  # background, if asked for: left out, as from nnU-Net's foreground mean
            continue
        region = REGION.fullmatch(key)
        if region and region.group(2):
            raise CompareError(
                f"{summary} scores regions ({key}: labels counted as one), not classes; "
                "compare reads nnU-Net results of label-based training only")
        text = region.group(1) if region else key
        if not text.isdecimal():
            raise CompareError(f"{summary} is damaged: {key!r} is not a label; rerun "
                               "nnU-Net's validation (--val) to write it again")
        labels[int(text)] = key
    if not labels:
        raise CompareError(f"{summary} scores no foreground label; nothing to compare")
    return dict(sorted(labels.items()))


def _class_names(trainer: Path, labels: Mapping[int, str]) -> tuple[str, ...]:
    """Background, then each label's name in the trainer's dataset.json (``class<id>`` where it
    names none, or there is none)."""
    path = trainer / "dataset.json"
    named: dict[int, str] = {}
    if path.is_file():
        dataset = records.read_nnunet_dataset(path, CompareError, "restore it from nnUNet_raw")
        for name, value in (dataset.get("labels") or {}).items():
            ids = value if isinstance(value, list) else [value]
            if len(ids) == 1 and isinstance(ids[0], int):
                named[ids[0]] = str(name)
    return ("background", *(named.get(label, f"class{label}") for label in labels))


def _scores(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """One label of one case: nnU-Net's Dice and IoU, recall and precision from its counts
    (0/0 = 1 as in condseg); all missing where the label is absent from both."""
    tp, fp, fn = (metrics[k] for k in records.NNUNET_COUNTS)
    if tp + fp + fn == 0 or math.isnan(metrics["Dice"]):
        return dict.fromkeys(TABLE_METRICS)
    return {"iou": float(metrics["IoU"]), "dice": float(metrics["Dice"]),
            "recall": tp / (tp + fn) if tp + fn else 1.0,
            "precision": tp / (tp + fp) if tp + fp else 1.0}


def _row(scores: Sequence[Mapping[str, float | None]], classes: Sequence[str]
         ) -> dict[str, float | None]:
    """The per-image row of condseg's K-class evaluations: foreground means, then per class."""
    row: dict[str, float | None] = {}
    for metric in TABLE_METRICS:
        present = [v for s in scores if (v := s[metric]) is not None]
        row[metric] = sum(present) / len(present) if present else None
    row.update({f"{m}/{c}": s[m] for m in TABLE_METRICS for c, s in zip(classes, scores,
                                                                         strict=True)})
    return row


def _case_name(file: str) -> str:
    """The case of a prediction file: its name less the file ending (``.nii.gz``, ``.png``)."""
    name = Path(file.replace("\\", "/")).name
    return name.removesuffix(".nii.gz") if name.endswith(".nii.gz") else Path(name).stem


def _identity(trainer: Path, reference: Mapping[str, list[int]]) -> dict[str, str]:
    """The dataset as compare's identity record: the results' dataset folder, the case names
    and the reference's voxel counts (what nnU-Net records of the masks)."""
    names = sorted(reference)
    return {"root": str(trainer.parent.resolve()), "names": _digest("\n".join(names)),
            "masks": "nnU-Net reference voxels " + _digest(json.dumps(
                [reference[n] for n in names]))}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _summary_name(fold: Path) -> str:
    return records.nnunet_summary_path(fold).relative_to(fold).as_posix()


def _train_command(fold: Path) -> str:
    trainer, plans, configuration = fold.parent.name.split("__")
    return (f"nnUNetv2_train {fold.parent.parent.name} {configuration} {fold.name[5:]} "
            f"-tr {trainer} -p {plans}")


def _todo(fold: Path) -> str:
    return ("wait for the fold to finish training (nnU-Net validates at its end), or run "
            f"`{_train_command(fold)} --val` if it finished without validating")
