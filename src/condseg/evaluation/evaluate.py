"""Evaluation of a model on a dataset split under one of two protocols (DESIGN §7).

``network`` is the paper's protocol: prediction and ground truth both at the network input
size, the mask resized exactly like a training target (area interpolation, threshold 0.5).
``original`` resizes the probabilities (bilinear) to each image's own size and compares with
the original mask — what a user of the predicted masks experiences: it runs the very code of
``predict`` (with the same inference options). Both run the model prepared by the inference
engine (the fast path by default) while DataLoader workers load the next batches.

A K-class model (K >= 2, :func:`~condseg.models.base.class_names`) is evaluated on a dataset
that declares the same classes (``labels.json``), by :func:`class_image_metrics`: the
prediction is the argmax of the probabilities — at the original resolution resized first, as
``predict`` does — against the mask's class ids (resized like a training target, nearest, at
the network resolution).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from condseg.data.check import check_dataset, require_prepared
from condseg.data.dataset import SegmentationDataset
from condseg.data.labels import Labels, read_labels
from condseg.errors import DataError, OptionError, refuse_existing
from condseg.evaluation.metrics import (
    METRIC_NAMES,
    class_image_metrics,
    class_metric_names,
    image_metrics,
    summarize,
)
from condseg.evaluation.names import display_name, formatted, unit
from condseg.inference.engine import Execution
from condseg.inference.loading import ImageFiles, check_batching
from condseg.inference.options import InferenceOptions, check_threshold
from condseg.inference.predict import (
    Predictor,
    check_probability_format,
    probability_path,
    save_probability,
)
from condseg.layout import EvalDir
from condseg.models.base import (
    SegmentationModel,
    class_names,
    eval_mode,
    input_size,
    normalization,
    probabilities,
    require_model,
)
from condseg.outputs import claims
from condseg.progress import WorkProgress
from condseg.records import read_evaluation, write_evaluation
from condseg.viz import save_png

RESOLUTIONS = ("network", "original")


@dataclass
class EvaluationResult:
    """Per-image rows (``name`` + METRIC_NAMES, or a K-class evaluation's
    :func:`class_metric_names`), their summary (one entry per metric, in column order) and how
    they were obtained; ``classes``: the K class names (None: binary)."""

    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]
    protocol: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None

    @property
    def means(self) -> dict[str, float | None]:
        """The dataset figure of each metric: the mean of its per-image values."""
        return {name: stats["mean"] for name, stats in self.summary.items()}

    @property
    def execution(self) -> str:
        """Where the model ran, e.g. ``cpu float32``."""
        record = self.protocol.get("execution") or {}
        return f"{record.get('device', '?')} {record.get('precision', '?')}"


@claims("out_dir", "save_masks", "save_probabilities")
def evaluate(
    model: SegmentationModel,
    data_root: str | Path,
    split: str = "val",
    resolution: str = "network",
    out_dir: str | Path | None = None,
    save_masks: str | Path | None = None,
    batch_size: int = 4,
    *,
    size: int | tuple[int, int] | None = None,
    threshold: float = 0.5,
    overwrite: bool = False,
    workers: int | None = None,
    options: InferenceOptions | None = None,
    execution: Execution | None = None,
    save_probabilities: str | Path | None = None,
    probability_format: str = "png",
    max_pixels: int | None = None,
    console: Console | None = None,
) -> EvaluationResult:
    """Evaluate ``model`` on ``split`` of the canonical dataset at ``data_root``.

    ``size`` (the network input) defaults to the model file's. ``options`` add test-time
    augmentation and sliding windows (the latter only at the original resolution: at the
    network resolution the image *is* one window). With ``out_dir`` the CSV and JSON of
    :func:`write_results` are written; with ``save_masks`` the thresholded predictions (0/255
    PNG; a K-class model's: the class ids, uint8 PNG), with ``save_probabilities`` the
    probabilities (``<name>_prob.png`` 8-bit or ``.npy`` float32), both at the protocol's
    resolution. A K-class model takes no ``threshold`` (argmax). Existing outputs are refused unless
    ``overwrite``. The model runs on ``execution`` (default: the fast path in float32 —
    evaluation numbers are the product, so reduced precision is asked for, not implied) while
    ``workers`` processes (default: one per spare core, at most 4; 0: none) load the
    batches. The split is checked
    first, as ``condseg data check`` does (``max_pixels``: the readers' pixel limit). With a
    ``console``, progress is shown (a bar on a terminal, plain lines elsewhere).
    """
    if resolution not in RESOLUTIONS:
        raise OptionError(f"resolution (--resolution) must be one of {RESOLUTIONS}, got "
                          f"{resolution!r}")
    options = options or InferenceOptions()
    if options.sliding_window is not None and resolution == "network":
        raise OptionError("sliding windows predict each image at its own resolution; use "
                          "resolution='original' (--resolution original)")
    model = require_model(model)
    check_probability_format(save_probabilities and probability_format, model.num_classes)
    check_threshold(threshold, model.num_classes)
    check_batching(batch_size, workers)
    size = input_size(model, size)
    mean, std = normalization(model)
    labels = _agreeing_labels(model, data_root, split)
    _refuse_broken(data_root, split, max_pixels, binary=labels is None)
    dataset = SegmentationDataset(data_root, split, size=size, mean=mean, std=std,
                                  max_pixels=max_pixels)
    mask_dir = Path(save_masks) if save_masks is not None else None
    prob_dir = Path(save_probabilities) if save_probabilities is not None else None
    planned = [mask_dir / f"{name}.png" for name in dataset.names] if mask_dir else []
    if prob_dir is not None:
        planned += [probability_path(prob_dir, n, probability_format) for n in dataset.names]
    if out_dir is not None:
        folder = EvalDir(Path(out_dir))
        planned += [folder.per_image, folder.summary]
    refuse_existing(planned, overwrite)
    for folder in (mask_dir, prob_dir):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    execution = execution or Execution(precision="float32")
    predictor = Predictor(model, options, execution, size=size, maps=False)
    if resolution == "network":
        pairs = _network_pairs(predictor, dataset, batch_size, workers)
    else:
        pairs = _original_pairs(predictor, dataset, batch_size, workers, labels)
    classes = labels.names if labels is not None else None
    rows: list[dict[str, Any]] = []
    with WorkProgress(console, len(dataset), f"evaluate {split}") as progress:
        for name, prob, gt in pairs:
            if classes is None:
                pred = prob >= threshold
                rows.append({"name": name, **image_metrics(prob, gt, threshold),
                             "empty_prediction": not pred.any(), "empty_truth": not gt.any()})
                written = pred.astype(np.uint8) * 255
            else:
                written = prob.argmax(0).astype(np.uint8)
                rows.append({"name": name, **class_image_metrics(written, gt, classes)})
            if mask_dir is not None:
                save_png(mask_dir / f"{name}.png", written)
            if prob_dir is not None:
                save_probability(probability_path(prob_dir, name, probability_format), prob)
            progress.advance()

    protocol = {
        "data_root": str(data_root),
        "split": split,
        "dataset": dataset_identity(data_root, dataset.names, [m for _, m in dataset.pairs]),
        "resolution": resolution,
        "input_size": list(size),
        "threshold": threshold if classes is None else None,
        "inference": options.record(),
        "execution": predictor.prepared.record(),
        "n_images": len(rows),
        "ground_truth": _ground_truth(resolution, classes is not None),
        "model": model.name,
        "method": ((model.meta or {}).get("config") or {}).get("method"),
        "model_file": (model.meta or {}).get("path"),
        "model_digest": _file_digest((model.meta or {}).get("path")),
    }
    names = METRIC_NAMES if classes is None else class_metric_names(classes)
    result = EvaluationResult(rows=rows, summary=summarize(rows, names), protocol=protocol,
                              classes=classes)
    if out_dir is not None:
        write_results(result, out_dir, overwrite=True)
    return result


def dataset_identity(
    data_root: str | Path, names: list[str], masks: list[Path]
) -> dict[str, str]:
    """What ``compare`` pairs and pools evaluations by, since folder and image names do not
    identify a dataset: the data root resolved, a digest of the sorted image names and one of
    the mask files' bytes in that order (cheap beside the evaluation that reads them)."""
    order = sorted(range(len(names)), key=names.__getitem__)
    listed = "\n".join(names[i] for i in order).encode("utf-8", "surrogateescape")
    masks_digest = hashlib.sha256()
    for i in order:
        content = Path(masks[i]).read_bytes()
        masks_digest.update(len(content).to_bytes(8, "little") + content)
    return {"root": str(Path(data_root).resolve()),
            "names": hashlib.sha256(listed).hexdigest(), "masks": masks_digest.hexdigest()}


def _file_digest(path: str | None) -> str | None:
    """The model file's sha256: a copy of a run evaluates the same weights under another
    path, and a file retrained in place other weights under the same one."""
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:  # hashlib.file_digest is Python >= 3.11
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ground_truth(resolution: str, classes: bool) -> str:
    """What the protocol compares with, in words (for summary.json)."""
    if resolution == "network":
        return ("class ids of the mask resized to input_size (nearest); argmax" if classes
                else "mask resized to input_size (area interpolation, threshold 0.5)")
    return ("original mask; probabilities resized bilinearly to the image size"
            + ("; argmax" if classes else ""))


def _agreeing_labels(model: SegmentationModel, data_root: str | Path, split: str) -> Labels | None:
    """The dataset's declaration when the model is a K-class model of the same classes; None
    when both are binary; one line refusing a model and a dataset whose classes differ."""
    require_prepared(Path(data_root), [split])
    labels = read_labels(data_root)
    dataset = labels.names if labels is not None and labels.foreground > 1 else None
    predicted = class_names(model)
    if predicted == dataset:
        return labels if dataset is not None else None
    has = (f"{len(predicted)} classes ({', '.join(predicted)})" if predicted
           else "one class (binary)")
    declares = (f"declares {len(dataset)} classes ({', '.join(dataset)})" if dataset
                else "is binary (no labels.json with two or more foreground classes)")
    raise DataError(f"{model.name} predicts {has} but dataset {data_root} {declares}: evaluate "
                    "a model trained on this dataset's classes")


def _refuse_broken(
    data_root: str | Path, split: str, max_pixels: int | None, binary: bool
) -> None:
    """Evaluate only what ``data check`` accepts: a broken, doubled or unreadable entry must
    not pass silently (nor be scored by a convention)."""
    report = check_dataset(data_root, splits=[split], max_pixels=max_pixels, binary=binary)
    if not report.ok:
        first = report.errors[0]
        where = first.file or first.name or first.split or str(data_root)
        raise DataError(
            f"split {split!r} of {data_root} has {len(report.errors)} error(s), the first: "
            f"{where}: {first.message}; see `condseg data check {data_root} --split {split}`"
        )


def _network_pairs(
    predictor: Predictor, dataset: SegmentationDataset, batch_size: int, workers: int | None
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, probability, ground truth) at the network input size (a K-class dataset's
    ground truth: class ids, uint8)."""
    with eval_mode(predictor.net):
        for batch in predictor.batches(dataset, batch_size, workers):
            images = torch.stack([item["image"] for item in batch])
            probs = probabilities(predictor.net, images, [item["name"] for item in batch])["mask"]
            for j, item in enumerate(batch):
                mask = item["mask"][0].numpy()
                gt = mask >= 0.5 if mask.dtype.kind == "f" else mask.astype(np.uint8)
                yield item["name"], probs[j].numpy(), gt


def _original_pairs(
    predictor: Predictor, dataset: SegmentationDataset, batch_size: int, workers: int | None,
    labels: Labels | None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, probability, ground truth) at each image's own size: exactly what ``predict``
    gives for the image, against the original mask (its class ids by ``labels`` when given)."""
    files = ImageFiles([image for image, _ in dataset.pairs], predictor.plan,
                       masks=[mask for _, mask in dataset.pairs], max_pixels=dataset.max_pixels,
                       labels=labels)
    for batch in predictor.batches(files, batch_size, workers):
        for item in batch:
            if "error" in item:
                raise DataError(item["error"])
        predictions = predictor.run([item["input"] for item in batch],
                                    [item["shape"] for item in batch],
                                    names=[str(files.files[item["index"]]) for item in batch])
        for item, pred in zip(batch, predictions, strict=True):
            yield dataset.names[item["index"]], pred.prob, item["mask"]


def write_results(
    result: EvaluationResult, out_dir: str | Path, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``per_image.csv`` (one column per metric of the summary: METRIC_NAMES, or the
    per-class columns of a K-class evaluation) and ``summary.json`` (protocol, classes and, per
    metric, mean, std, n, missing): :func:`condseg.records.write_evaluation`."""
    folder = EvalDir(Path(out_dir))
    refuse_existing([folder.per_image, folder.summary], overwrite)
    return write_evaluation(folder, list(result.summary), result.rows, result.summary,
                            result.protocol, result.classes)


def read_results(out_dir: str | Path) -> EvaluationResult:
    """What :func:`write_results` wrote to ``out_dir``, as the result object
    (:func:`condseg.records.read_evaluation`)."""
    folder = EvalDir(Path(out_dir))
    record = read_evaluation(folder, DataError, f"move {folder.path} away to evaluate again")
    return EvaluationResult(rows=record.rows, summary=record.metrics, protocol=record.protocol,
                            classes=record.classes)


def print_table(result: EvaluationResult, console: Console | None = None) -> None:
    """Print the summary: overlap metrics as percentages like the paper, mean ± std; the title
    says what was evaluated and how (images, resolution, device and precision)."""
    protocol = result.protocol
    title = (
        f"{protocol.get('model', 'model')} on {protocol.get('split', '?')} "
        f"({protocol.get('n_images', len(result.rows))} images, "
        f"{protocol.get('resolution', '?')} resolution, {result.execution})"
    )
    conventional = _scored_by_convention(result.rows)
    caption = None
    if any(conventional.values()):
        caption = ("0/0 = 1: images whose score is 1 only because there was nothing to get "
                   "wrong (e.g. the precision of an empty prediction)")
    table = Table(title=title, caption=caption)
    for column in ("metric", "mean", "std", "n", "missing", "0/0 = 1"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, stats in result.summary.items():
        shown = f"{display_name(name)} ({unit(name)})" if unit(name) else display_name(name)
        table.add_row(
            shown,
            formatted(name, stats["mean"]),
            formatted(name, stats["std"]),
            str(stats["n"]),
            str(stats["missing"]),
            str(conventional[name]) if conventional.get(name) else "",
        )
    (console or Console()).print(table)


def _scored_by_convention(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Per overlap metric, how many images scored 1 by 0/0 = 1 (overlap.py): precision with an
    empty prediction, recall with an empty truth, IoU/Dice/F2 with both empty."""
    empty_pred = [bool(r.get("empty_prediction")) for r in rows]
    empty_truth = [bool(r.get("empty_truth")) for r in rows]
    both = sum(p and t for p, t in zip(empty_pred, empty_truth, strict=True))
    return {"precision": sum(empty_pred), "recall": sum(empty_truth), "iou": both,
            "dice": both, "f2": both}

