"""Which evaluations a comparison may count, put in one column, pair image by image or pool
into one row. Folder and image names do not say it: two datasets called ``data`` may share their
file names, and one run reached by two paths is still one run. Each evaluation records its
dataset (the data root resolved and digests of its image names and mask bytes:
:func:`~condseg.evaluation.evaluate.dataset_identity`), its protocol and its model file's digest,
and the comparison goes by them:

- the same evaluation twice — one folder reached by two paths, a run and its own evaluation
  folder, a run and its copy, one model file evaluated twice the same way — is refused, as it
  would count twice;
- different data under one column name is shown in a column per data root (named by as much
  of the root's path as tells them apart, with a note); different data from one root (its
  masks or its split changed in between) is refused;
- evaluations of different classes (a binary one beside a multi-class one included) are
  refused: their columns would mean different things;
- different protocols in one column (input size, threshold, test-time augmentation, sliding
  windows, precision) are kept and named in the notes with the rows of each value;
- evaluations written before this record are compared by names alone, as a note says.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from condseg.errors import CompareError
from condseg.evaluation.compare.result import Entry, Evaluation

#: The recorded options a note names when evaluations of one column differ in them.
NOTED = ("input_size", "threshold", "tta", "tta rotations", "sliding_window", "overlap",
         "precision")


def dataset_record(evaluation: Evaluation) -> dict[str, str] | None:
    """The evaluation's recorded dataset identity (root, names, masks); None when it was
    written before condseg recorded it."""
    record = evaluation.protocol.get("dataset")
    if isinstance(record, dict) and all(isinstance(record.get(k), str)
                                        for k in ("root", "names", "masks")):
        return record
    return None


def root_of(evaluation: Evaluation) -> str:
    """The data root: resolved where recorded, else as given to evaluate."""
    record = dataset_record(evaluation)
    return record["root"] if record else str(evaluation.protocol.get("data_root") or "")


def protocol_values(protocol: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded options that change the figures (an option not recorded is absent)."""
    values = {key: protocol[key] for key in ("resolution", "input_size", "threshold")
              if key in protocol}
    inference = protocol.get("inference")
    if isinstance(inference, dict):
        window = inference.get("sliding_window")
        values.update({"tta": inference.get("tta"), "tta rotations": inference.get("rotations"),
                       "sliding_window": window or "off"})
        if window:
            values["overlap"] = inference.get("overlap")
    execution = protocol.get("execution")
    if isinstance(execution, dict) and "precision" in execution:
        values["precision"] = execution["precision"]
    return values


# --------------------------------------------------------------------------- duplicates


def refuse_duplicates(entries: Sequence[Entry]) -> None:
    """Refuse an evaluation given twice: one folder through two inputs (two paths to it, a run
    and its evaluation folder), or one model file (by digest; by path with identical scores
    where no digest was recorded) evaluated on the same data under the same protocol."""
    given: dict[Path, Entry] = {}
    for entry in entries:  # an nnU-Net trainer folder gives its folds' too
        for evaluation in [*entry.evaluations, *(e for run in entry.pooled
                                                  for e in run.evaluations)]:
            real = evaluation.path.resolve()
            first = given.setdefault(real, entry)
            if first is not entry:
                raise CompareError(f"{first.source} and {entry.source} both give the evaluation "
                                   f"{real}; give each run or evaluation once")
    measured = [(e, _measurement(e)) for entry in entries for e in entry.evaluations]
    for (a, key_a), (b, key_b) in combinations(measured, 2):
        if key_a == key_b and _same_model(a, b):
            raise CompareError(
                f"{a.path} and {b.path} evaluate the same model on the same data under the same "
                "protocol (a run and its copy?), so they would count as two runs; give one of them")


def refuse_mixed_classes(entries: Sequence[Entry]) -> None:
    """Refuse evaluations of different classes (names or number) in one comparison, a binary
    one beside a multi-class one included: their columns would mean different things."""
    evaluations = [e for entry in entries for e in entry.evaluations]
    first = evaluations[0]
    for other in evaluations[1:]:
        if other.classes == first.classes:
            continue
        a, b = (first, other) if first.classes is None or other.classes is not None else (
            other, first)
        if a.classes is None:
            raise CompareError(
                f"{a.path} is a binary evaluation but {b.path} has classes "
                f"{', '.join(b.classes or ())}; binary and multi-class evaluations are not "
                "compared: give evaluations of one task")
        raise CompareError(
            f"{a.path} has classes {', '.join(a.classes)} but {b.path} has "
            f"{', '.join(b.classes or ())}; compare evaluations of one set of classes")


def _measurement(evaluation: Evaluation) -> str:
    """What was measured, but for the model: the data, the split and every recorded option
    (the device and the execution path are not: the same arithmetic up to rounding)."""
    record = dataset_record(evaluation)
    data = [record["names"], record["masks"]] if record else root_of(evaluation)
    protocol = evaluation.protocol
    return json.dumps([data, protocol.get("split"), protocol_values(protocol)], sort_keys=True,
                      default=str)


def _same_model(a: Evaluation, b: Evaluation) -> bool:
    digests = a.protocol.get("model_digest"), b.protocol.get("model_digest")
    if all(digests):
        return digests[0] == digests[1]
    path = a.protocol.get("model_file")
    return bool(path) and path == b.protocol.get("model_file") and a.per_image == b.per_image


# --------------------------------------------------------------------------- datasets


def roots_to_tell_apart(evaluations: Sequence[Evaluation]) -> dict[str, dict[str, str]]:
    """Per column holding different data from different roots, each root's shortest path tail
    that tells it from the others (``a/data``, ``b/data``), to name a column of its own.
    Different data of one split from one root is refused: one of them is out of date."""
    by_column: dict[str, list[Evaluation]] = {}
    for evaluation in evaluations:
        by_column.setdefault(evaluation.column, []).append(evaluation)
    tails: dict[str, dict[str, str]] = {}
    for column, group in by_column.items():
        if _different_data(group):
            roots = list(dict.fromkeys(root_of(e) for e in group))
            tails[column] = dict(zip(roots, _tails(roots), strict=True))
    return tails


def _different_data(group: Sequence[Evaluation]) -> bool:
    """Whether evaluations of one split in ``group`` recorded different data."""
    different = False
    by_split: dict[str, list[Evaluation]] = {}
    for evaluation in group:
        by_split.setdefault(str(evaluation.protocol.get("split")), []).append(evaluation)
    for split, evaluations in by_split.items():
        known = [(e, r) for e in evaluations if (r := dataset_record(e)) is not None]
        for (a, ra), (b, rb) in combinations(known, 2):
            if ra["root"] == rb["root"] and (ra["names"], ra["masks"]) != (rb["names"],
                                                                            rb["masks"]):
                what = "image lists" if ra["names"] != rb["names"] else "masks"
                raise CompareError(
                    f"{a.path} and {b.path} evaluated split {split!r} of {ra['root']} with "
                    f"different {what} (changed there in between); re-evaluate the one that "
                    f"predates the change: condseg evaluate MODEL --data {ra['root']} --split "
                    f"{split} --out FOLDER --overwrite")
        different |= len({(r["names"], r["masks"]) for _, r in known}) > 1
    return different


def _tails(roots: Sequence[str]) -> list[str]:
    parts = [Path(root).parts for root in roots]
    for n in range(1, max(map(len, parts)) + 1):
        tails = [Path(*p[-n:]).as_posix() if p else "data" for p in parts]
        if len(set(tails)) == len(tails):
            return tails
    return list(roots)


def unrecorded_notes(entries: Sequence[Entry], columns: Sequence[str]) -> list[str]:
    """Name the evaluations of a shared column that recorded no dataset identity."""
    notes = []
    for column in columns:
        group = [e for entry in entries if (e := entry.evaluation(column)) is not None]
        old = [str(e.path) for e in group if dataset_record(e) is None]
        if old and len(group) > 1:
            notes.append(f"{column}: {', '.join(old)} record no dataset identity (evaluated "
                         "before condseg recorded it), so they are paired and pooled by folder "
                         "and image names alone; evaluate again to check the data")
    return notes


def identical_notes(entries: Sequence[Entry], columns: Sequence[str]) -> list[str]:
    """Name evaluations of a column with identical per-image scores: copies of one model
    evaluated apart, or models that predict alike; either way not independent runs."""
    notes = []
    for column in columns:
        by_scores: dict[str, list[str]] = {}
        for entry in entries:
            evaluation = entry.evaluation(column)
            if evaluation is not None and evaluation.per_image:
                scores = json.dumps(evaluation.per_image, sort_keys=True)
                by_scores.setdefault(scores, []).append(str(evaluation.path))
        notes += [f"{column}: {', '.join(paths)} have identical per-image scores (one model "
                  "evaluated apart, or models that predict alike)"
                  for paths in by_scores.values() if len(paths) > 1]
    return notes


# --------------------------------------------------------------------------- protocols


def protocol_notes(entries: Sequence[Entry], columns: Sequence[str]) -> list[str]:
    """Name every recorded option the evaluations of a column differ in, with the rows (labels)
    of each value: with ``--pool``, a label under two values mixes them in one row."""
    notes = []
    for column in columns:
        by_key: dict[str, dict[str, list[str]]] = {}
        for entry in entries:
            evaluation = entry.evaluation(column)
            if evaluation is None:
                continue
            for key, value in protocol_values(evaluation.protocol).items():
                shown = value if isinstance(value, str) else json.dumps(value)
                labels = by_key.setdefault(key, {}).setdefault(shown, [])
                if entry.label not in labels:
                    labels.append(entry.label)
        for key in NOTED:
            values = by_key.get(key, {})
            if len(values) > 1:
                shown = "; ".join(f"{v}: {', '.join(labels)}" for v, labels in values.items())
                notes.append(f"{column}: the evaluations differ in {key} ({shown})")
    return notes
