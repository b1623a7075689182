"""Evaluation of a model on a dataset split under one of two protocols (DESIGN §7).

``network`` is the paper's protocol: prediction and ground truth both at the network input
size, the mask resized exactly like a training target (area interpolation, threshold 0.5).
``original`` resizes the probabilities (bilinear) to each image's own size and compares with
the original mask — what a user of the predicted masks experiences: it runs the very code of
``predict`` (with the same inference options). Both run the model prepared by the inference
engine (the fast path by default) while DataLoader workers load the next batches.
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

from condseg.data.check import check_dataset
from condseg.data.dataset import SegmentationDataset
from condseg.errors import DataError, OptionError, refuse_existing
from condseg.evaluation.metrics import METRIC_NAMES, image_metrics, summarize
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
    """Per-image rows (``name`` + METRIC_NAMES), their summary and how they were obtained."""

    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]
    protocol: dict[str, Any] = field(default_factory=dict)

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
    PNG), with ``save_probabilities`` the probabilities (``<name>_prob.png`` 8-bit or ``.npy``
    float32), both at the protocol's resolution. Existing outputs are refused unless
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
    check_probability_format(save_probabilities and probability_format)
    check_threshold(threshold)
    check_batching(batch_size, workers)
    model = require_model(model)
    size = input_size(model, size)
    mean, std = normalization(model)
    _refuse_broken(data_root, split, max_pixels)
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
        pairs = _original_pairs(predictor, dataset, batch_size, workers)
    rows: list[dict[str, Any]] = []
    with WorkProgress(console, len(dataset), f"evaluate {split}") as progress:
        for name, prob, gt in pairs:
            pred = prob >= threshold
            rows.append({"name": name, **image_metrics(prob, gt, threshold),
                         "empty_prediction": not pred.any(), "empty_truth": not gt.any()})
            if mask_dir is not None:
                save_png(mask_dir / f"{name}.png", pred.astype(np.uint8) * 255)
            if prob_dir is not None:
                save_probability(probability_path(prob_dir, name, probability_format), prob)
            progress.advance()

    protocol = {
        "data_root": str(data_root),
        "split": split,
        "dataset": dataset_identity(data_root, dataset.names, [m for _, m in dataset.pairs]),
        "resolution": resolution,
        "input_size": list(size),
        "threshold": threshold,
        "inference": options.record(),
        "execution": predictor.prepared.record(),
        "n_images": len(rows),
        "ground_truth": (
            "mask resized to input_size (area interpolation, threshold 0.5)"
            if resolution == "network"
            else "original mask; probabilities resized bilinearly to the image size"
        ),
        "model": model.name,
        "method": ((model.meta or {}).get("config") or {}).get("method"),
        "model_file": (model.meta or {}).get("path"),
        "model_digest": _file_digest((model.meta or {}).get("path")),
    }
    result = EvaluationResult(rows=rows, summary=summarize(rows), protocol=protocol)
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


def _refuse_broken(data_root: str | Path, split: str, max_pixels: int | None) -> None:
    """Evaluate only what ``data check`` accepts: a broken, doubled or unreadable entry must
    not pass silently (nor be scored by a convention)."""
    report = check_dataset(data_root, splits=[split], max_pixels=max_pixels, binary=True)
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
    """(name, probability, ground truth) at the network input size."""
    with eval_mode(predictor.net):
        for batch in predictor.batches(dataset, batch_size, workers):
            images = torch.stack([item["image"] for item in batch])
            probs = probabilities(predictor.net, images, [item["name"] for item in batch])["mask"]
            for j, item in enumerate(batch):
                yield item["name"], probs[j].numpy(), item["mask"][0].numpy() >= 0.5


def _original_pairs(
    predictor: Predictor, dataset: SegmentationDataset, batch_size: int, workers: int | None
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, probability, ground truth) at each image's own size: exactly what ``predict``
    gives for the image, against the original mask."""
    files = ImageFiles([image for image, _ in dataset.pairs], predictor.plan,
                       masks=[mask for _, mask in dataset.pairs], max_pixels=dataset.max_pixels)
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
    """Write ``per_image.csv`` (one column per metric of METRIC_NAMES) and ``summary.json``
    (protocol and, per metric, mean, std, n, missing): :func:`condseg.records.write_evaluation`."""
    folder = EvalDir(Path(out_dir))
    refuse_existing([folder.per_image, folder.summary], overwrite)
    return write_evaluation(folder, METRIC_NAMES, result.rows, result.summary, result.protocol)


def read_results(out_dir: str | Path) -> EvaluationResult:
    """What :func:`write_results` wrote to ``out_dir``, as the result object
    (:func:`condseg.records.read_evaluation`)."""
    folder = EvalDir(Path(out_dir))
    record = read_evaluation(folder, DataError, f"move {folder.path} away to evaluate again")
    return EvaluationResult(rows=record.rows, summary=record.metrics, protocol=record.protocol)


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
    for name in METRIC_NAMES:
        stats = result.summary[name]
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

