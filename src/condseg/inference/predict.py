"""Prediction on new images at their original resolution.

The network sees the image resized to its training size and normalised as in training (both
read from the model file's header); its probabilities are resized back to the image's own size,
so masks line up with the input pixel for pixel. :class:`InferenceOptions` add test-time
augmentation and sliding windows (an image larger than a chosen size is then predicted at its
own resolution, window by window) by wrapping the model, never by another code path. The
model runs on the inference engine's fast path unless told otherwise
(:mod:`condseg.inference.engine`), batched, while DataLoader workers decode the next images
(:mod:`condseg.inference.loading`). A K-class model's K probability maps are resized, then
their argmax taken: class ids, background 0.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch.utils.data import DataLoader, Dataset

from condseg.data.dataset import read_image
from condseg.data.names import IMAGE_EXTENSIONS, scan_folder, shown
from condseg.data.transforms import resize_probabilities
from condseg.errors import DataError, ModelError, OptionError, refuse_existing
from condseg.filekind import special
from condseg.files import write_bytes
from condseg.inference.engine import Execution, prepare
from condseg.inference.loading import ImageFiles, InputPlan, batches, check_batching
from condseg.inference.options import InferenceOptions, check_threshold
from condseg.models.base import (
    SegmentationModel,
    class_names,
    eval_mode,
    input_size,
    labels_of,
    normalization,
    probabilities,
    require_model,
)
from condseg.outputs import claims
from condseg.progress import WorkProgress
from condseg.viz import class_overlay, colour_labels, map_paths, save_maps, save_png, with_legend
from condseg.viz import overlay as make_overlay

#: How probability maps can be saved: 8-bit PNG (round(255·p)) or float32 NumPy arrays (the
#: only form of a K-class model's K maps).
PROBABILITY_FORMATS = ("png", "npy")
#: The classes of a binary model's colour PNG.
BINARY_CLASSES = ("background", "foreground")


@dataclass
class Prediction:
    """One image's result: ``prob`` (H, W) float32 and ``mask`` bool — of a K-class model,
    ``prob`` (K, H, W) and ``mask`` its argmax, uint8 class ids — and the model's auxiliary
    probability ``maps`` (ConDSeg's SID maps; empty for most models)."""

    prob: np.ndarray
    mask: np.ndarray
    maps: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class PredictReport:
    """What :func:`predict_files` wrote, each input it could not use with the reason
    (``failed``), and each entry of a given folder it did not take, with the reason
    (``skipped``: hidden entries, subfolders, files of other types)."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


class Predictor:
    """A model prepared once for inference (:func:`~condseg.inference.engine.prepare`, then the
    inference options) and the rule of its inputs: what :func:`predict`, :func:`predict_files`
    and the original-resolution evaluation share. ``size`` overrides the network input size
    (default: the model file's; a model without a file rounds each image to its divisor);
    ``maps``: as :func:`~condseg.inference.engine.prepare` (False: the mask alone)."""

    def __init__(
        self,
        model: SegmentationModel,
        options: InferenceOptions | None = None,
        execution: Execution | None = None,
        *,
        size: int | tuple[int, int] | None = None,
        maps: bool | None = None,
    ) -> None:
        model = require_model(model)
        options = options or InferenceOptions()
        self.prepared = prepare(model, execution, maps=maps)
        self.net = options.wrap(self.prepared)
        mean, std = normalization(model)
        fixed = input_size(model, size) if size is not None or model.meta is not None else None
        self.plan = InputPlan(mean, std, fixed, model.input_divisor, options.sliding_window)

    def batches(self, dataset: Dataset, batch_size: int, workers: int | None) -> DataLoader:
        """:func:`~condseg.inference.loading.batches` of ``dataset`` for this model's device
        (pinned memory for a GPU)."""
        return batches(dataset, batch_size, workers, self.prepared.device.type == "cuda")

    def run(
        self, inputs: Sequence[torch.Tensor], shapes: Sequence[Sequence[int]],
        threshold: float = 0.5, names: Sequence[str] | None = None,
    ) -> list[Prediction]:
        """Predictions at the images' own ``shapes`` from their network ``inputs``
        (:meth:`InputPlan.tensor`): one forward pass per distinct input size. ``names`` name
        the images in errors."""
        check_threshold(threshold, self.net.num_classes)
        names = names or [f"image {i}" for i in range(len(inputs))]
        results: dict[int, Prediction] = {}
        sizes = [tuple(x.shape[-2:]) for x in inputs]
        with eval_mode(self.net):
            for size in dict.fromkeys(sizes):
                indices = [i for i, s in enumerate(sizes) if s == size]
                probs = probabilities(self.net, torch.stack([inputs[i] for i in indices]),
                                      [names[i] for i in indices])
                for j, i in enumerate(indices):
                    results[i] = to_original_size(
                        {key: p[j] for key, p in probs.items()}, shapes[i], threshold
                    )
        return [results[i] for i in range(len(inputs))]

    def arrays(
        self, images: Sequence[np.ndarray], threshold: float = 0.5,
        names: Sequence[str] | None = None,
    ) -> list[Prediction]:
        """Predictions of uint8 RGB arrays (H, W, 3), prepared in this process."""
        images = [_check_rgb(image) for image in images]
        return self.run([self.plan.tensor(image) for image in images],
                        [image.shape[:2] for image in images], threshold, names)


def predict(
    model: SegmentationModel,
    image: np.ndarray | str | Path,
    threshold: float = 0.5,
    options: InferenceOptions | None = None,
    execution: Execution | None = None,
) -> Prediction:
    """Predict one image (a path, or a uint8 RGB array (H, W, 3)) at its original size.

    The model is prepared for ``execution`` (default: the fast path) at each call; to predict
    many images, prepare it once (``condseg.prepare``) and pass the prepared model, or use
    :func:`predict_files`."""
    check_threshold(threshold, require_model(model).num_classes)
    array = read_image(image) if isinstance(image, (str, Path)) else image
    names = [str(image)] if isinstance(image, (str, Path)) else None
    return Predictor(model, options, execution).arrays([array], threshold, names)[0]


def predict_arrays(
    model: SegmentationModel,
    images: Sequence[np.ndarray],
    threshold: float = 0.5,
    options: InferenceOptions | None = None,
    execution: Execution | None = None,
    *,
    size: tuple[int, int] | None = None,
) -> list[Prediction]:
    """Predict several RGB images in one forward pass per distinct network size (``size``, by
    default the model file's; an image that slides keeps its own)."""
    return Predictor(model, options, execution, size=size).arrays(images, threshold)


@claims("out_dir")
def predict_files(
    model: SegmentationModel,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    overlay: bool = False,
    colour: bool = False,
    maps: bool = False,
    batch_size: int = 4,
    threshold: float = 0.5,
    overwrite: bool = False,
    options: InferenceOptions | None = None,
    execution: Execution | None = None,
    workers: int | None = None,
    probability_format: str | None = None,
    max_pixels: int | None = None,
    console: Console | None = None,
) -> PredictReport:
    """Predict image files and folders (all their images, sorted) into ``out_dir``.

    Writes ``<name>.png`` (0/255 mask; of a K-class model the class ids 0..K-1), with
    ``overlay`` also ``<name>_overlay.png`` (a K-class model's coloured by class), with
    ``colour`` also ``<name>_colour.png`` (the classes in :func:`~condseg.viz.class_colours`
    with a legend below), with ``maps`` also ``<name>_<map>.png`` heat maps of the model's
    ``map_names`` (ConDSeg: fg, bg, uc), with ``probability_format`` (``"png"`` or ``"npy"``;
    K maps: ``"npy"``) also the mask probability ``<name>_prob.<format>``
    (:func:`save_probability`). An input that cannot be
    used (missing, undecodable, a second file with the same name) is recorded in
    ``report.failed`` and the others are still written. A file given by name is tried whatever
    its name; of a folder, every entry with an image extension is tried (a looping link is
    reported, not skipped) and every other entry is listed in ``report.skipped``.
    ``max_pixels`` is the readers' pixel limit. If any output file exists already, nothing is
    written and FileExistsError is raised, unless ``overwrite`` is set. The model runs on
    ``execution`` (default: the fast path) ``batch_size`` images at a time while ``workers``
    processes (default: :func:`~condseg.inference.loading.default_workers`) decode the next
    ones. With a ``console``, progress is shown (a bar on a terminal, plain lines elsewhere).
    """
    check_probability_format(probability_format, require_model(model).num_classes)
    check_threshold(threshold, model.num_classes)
    check_batching(batch_size, workers)
    predictor = Predictor(model, options, execution, maps=maps)
    if maps and not predictor.prepared.map_names:
        raise ModelError(f"the model {predictor.prepared.name} produces no probability maps; "
                         "drop the maps option (--maps)")
    report = PredictReport()
    jobs = _plan(inputs, report)
    out_dir = Path(out_dir)
    map_names = predictor.prepared.map_names if maps else ()
    outputs = {name: _output_paths(out_dir, name, overlay, colour, map_names, probability_format)
               for name in jobs}
    refuse_existing([p for paths in outputs.values() for p in paths.values()], overwrite)
    classes = class_names(model) or BINARY_CLASSES
    names = list(jobs)
    files = ImageFiles([jobs[n] for n in names], predictor.plan, keep_images=overlay,
                       max_pixels=max_pixels)
    loader = predictor.batches(files, batch_size, workers)
    out_dir.mkdir(parents=True, exist_ok=True)
    with WorkProgress(console, len(names), "predict") as progress:
        for batch in loader:
            loaded = [item for item in batch if "error" not in item]
            report.failed.extend((files.files[item["index"]], item["error"])
                                 for item in batch if "error" in item)
            predictions = predictor.run([item["input"] for item in loaded],
                                        [item["shape"] for item in loaded], threshold,
                                        [str(files.files[item["index"]]) for item in loaded])
            for item, pred in zip(loaded, predictions, strict=True):
                name = names[item["index"]]
                report.written.extend(_write(pred, item.get("image"), outputs[name], classes))
                if maps:
                    report.written.extend(save_maps(pred.maps, out_dir, name))
                if probability_format:
                    report.written.append(save_probability(outputs[name]["prob"], pred.prob))
            progress.advance(len(batch))
    return report


def _write(
    pred: Prediction, image: np.ndarray | None, paths: dict[str, Path], classes: Sequence[str]
) -> list[Path]:
    """The mask of one image (0/255, or class ids) and, where ``paths`` has them, its overlay
    and its colour PNG."""
    binary = pred.mask.dtype == bool
    labels = pred.mask.astype(np.uint8)
    written = [save_png(paths["mask"], labels * 255 if binary else labels)]
    if "overlay" in paths:
        overlaid = (make_overlay(image, pred.mask) if binary
                    else class_overlay(image, labels, len(classes)))
        written.append(save_png(paths["overlay"], overlaid))
    if "colour" in paths:
        written.append(save_png(paths["colour"],
                                with_legend(colour_labels(labels, len(classes)), classes)))
    return written


def report_lines(report: PredictReport, limit: int = 5) -> list[tuple[str, str]]:
    """``(kind, line)`` for the console, each on one line (:func:`~condseg.data.names.shown`):
    a ``failed`` line per input that could not be used, and a ``skipped`` line per folder and
    reason naming the first ``limit`` entries and counting the rest."""
    groups: dict[tuple[Path, str], list[str]] = {}
    for path, reason in report.skipped:
        groups.setdefault((path.parent, reason), []).append(path.name)
    skipped = [
        f"{folder}: {len(names)} {'entry' if len(names) == 1 else 'entries'} ({reason}): "
        + ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit
                                      else "")
        for (folder, reason), names in groups.items()
    ]
    return [("failed", shown(f"{path}: {reason}")) for path, reason in report.failed] + [
        ("skipped", shown(line)) for line in skipped]


def check_probability_format(fmt: str | None, num_classes: int = 1) -> None:
    """Refuse an unknown format, and PNG for the K maps of a K-class model (a PNG holds one)."""
    if fmt is not None and fmt not in PROBABILITY_FORMATS:
        raise OptionError(f"probability_format (--probability-format) must be "
                          f"{' or '.join(PROBABILITY_FORMATS)}; got {fmt!r}")
    if fmt == "png" and num_classes > 1:
        raise OptionError(f"the model has {num_classes} classes, so {num_classes} probability "
                          "maps an image, which one 8-bit PNG cannot hold; use "
                          "--probability-format npy (a float32 (K, H, W) array)")


def probability_path(out_dir: str | Path, name: str, fmt: str) -> Path:
    """Where a probability map is saved: ``<out_dir>/<name>_prob.<fmt>`` (beside the masks
    without clashing with ``<name>.png``)."""
    return Path(out_dir) / f"{name}_prob.{fmt}"


def save_probability(path: Path, prob: np.ndarray) -> Path:
    """``.png``: 8-bit grey round(255·p), what the polyp literature's evaluation scripts read;
    ``.npy``: the float32 map itself — (K, H, W) of a K-class model, class by class in id
    order, summing to 1 at each pixel (``np.load`` reads it; nothing is pickled)."""
    if path.suffix == ".npy":  # serialised here: np.save's own short write is no clear error
        buffer = io.BytesIO()
        np.save(buffer, prob.astype(np.float32), allow_pickle=False)
        return write_bytes(path, buffer.getbuffer())
    return save_png(path, np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8))


def _plan(inputs: Iterable[str | Path], report: PredictReport) -> dict[str, Path]:
    """Output name → input file, expanding folders; unusable inputs go to ``report.failed``,
    folder entries not taken to ``report.skipped``."""
    jobs: dict[str, Path] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            scan = scan_folder(item)
            files = scan.images
            report.skipped.extend(scan.skipped)
            if not files:
                report.failed.append(
                    (item, f"folder has no image files ({', '.join(IMAGE_EXTENSIONS)})")
                )
        elif (kind := special(item)) is not None:  # a FIFO would be waited on for ever
            report.failed.append((item, f"{kind}, not a regular file: not opened"))
            continue
        elif item.is_file() or item.is_symlink():
            files = [item]
        else:
            report.failed.append((item, "no such file or folder"))
            continue
        for file in files:
            if file.stem in jobs:
                reason = f"output name {file.stem!r} is already used by {jobs[file.stem]}"
                report.failed.append((file, reason + "; rename one of them"))
            else:
                jobs[file.stem] = file
    return jobs


def _output_paths(
    out_dir: Path, name: str, overlay: bool, colour: bool, map_names: Sequence[str],
    probability: str | None,
) -> dict[str, Path]:
    """The files of one image by kind — ``mask``, ``overlay``, ``colour``, ``map KEY`` (where
    :func:`~condseg.viz.save_maps` writes), ``prob`` — in the order they are written."""
    paths = {"mask": out_dir / f"{name}.png"}
    if overlay:
        paths["overlay"] = out_dir / f"{name}_overlay.png"
    if colour:
        paths["colour"] = out_dir / f"{name}_colour.png"
    paths.update({f"map {key}": path for key, path in map_paths(out_dir, name, map_names).items()})
    if probability:
        paths["prob"] = probability_path(out_dir, name, probability)
    return paths


def _check_rgb(image: np.ndarray) -> np.ndarray:
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
    ):
        described = (
            f"{image.dtype} {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise DataError(
            f"predict needs a uint8 RGB array (H, W, 3) or an image path, got {described}; "
            "use condseg.data.dataset.read_image to load other formats"
        )
    return image


def to_original_size(
    probs: dict[str, torch.Tensor], shape: Sequence[int], threshold: float = 0.5
) -> Prediction:
    """One image's probabilities (``mask``: (h, w), or (K, h, w) of K classes; the model's
    maps: (h, w)) resized back to the image size ``shape``, then the mask thresholded (binary)
    or its argmax taken (K classes): probabilities, never labels, are resized."""
    mask = probs["mask"]
    maps = [key for key in probs if key != "mask"]
    planes = torch.cat([mask.reshape(-1, *mask.shape[-2:]), *(probs[k][None] for k in maps)])
    resized = resize_probabilities(planes, shape)
    split = len(resized) - len(maps)
    prob = resized[:split] if mask.ndim == 3 else resized[0]
    return Prediction(prob=prob, mask=labels_of(prob, threshold),
                      maps=dict(zip(maps, resized[split:], strict=True)))
