"""The comparison as figures: each method's predicted masks on chosen shared images (the
ConDSeg paper's Fig. 2; multi-class: coloured by class, with a legend) and the validation
curves of each run (its Fig. 5: :mod:`.curves`). Each model is loaded and prepared for
inference once, then predicts every chosen image as ``condseg predict`` would."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from condseg.errors import CompareError, CondsegError
from condseg.evaluation.compare.curves import curves_figure
from condseg.evaluation.compare.nnunet import SOURCE as NNUNET
from condseg.evaluation.compare.result import Comparison, Entry
from condseg.evaluation.names import MISSING
from condseg.evaluation.overlap import class_confusion, class_scores, overlap_scores
from condseg.records import read_result

FIGURE_FILES = ("predictions.png", "predictions.pdf", "curves.png", "curves.pdf")
FigureResult = tuple[list[Path], list[str]]  # the files written (none: skipped) and notes
#: Images per forward pass: ``condseg predict``'s default batch, so the masks are its masks.
PREDICT_BATCH = 4


@dataclass(frozen=True)
class ImageChoice:
    """The rows of predictions.png: ``count`` images evenly spaced over the sorted names, the
    ``names`` given, or the ``count`` images ranked ``"best"``/``"worst"`` for the first input."""

    count: int = 4
    names: tuple[str, ...] = ()
    rank: str | None = None


def parse_images(spec: int | str | Sequence[str]) -> ImageChoice:
    """``4`` (evenly spaced), ``"worst:4"`` / ``"best:4"`` (:func:`ranked_images`) or image
    names (``"a,b"``, or a list); a single name that is a number is written ``"12,"``."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdecimal()):
        count = int(spec)
        if count < 1:
            raise CompareError(f"--images must be at least 1, got {spec}")
        return ImageChoice(count=count)
    if isinstance(spec, str):
        rank, colon, count_text = spec.strip().partition(":")
        if colon and rank in ("best", "worst"):
            if not count_text.strip().isdecimal() or int(count_text) < 1:
                raise CompareError(f"--images {spec}: give {rank}:K with K a whole number of "
                                   "images, at least 1 (e.g. worst:4)")
            return ImageChoice(count=int(count_text), rank=rank)
        spec = spec.split(",")
    names = tuple(dict.fromkeys(n.strip() for n in spec if n.strip()))
    if not names:
        raise CompareError(f"--images {spec!r} names no image; give a number of images, "
                           "worst:K, best:K or image names separated by commas")
    return ImageChoice(count=len(names), names=names)


def figure_images(result: Comparison, choice: ImageChoice) -> tuple[Path, list[str]] | str:
    """Data root and the chosen names of the reference's first dataset (images every input
    evaluated on that dataset shares), or why there are none. Raises CompareError for chosen
    names that are not among them."""
    evaluation = result.entries[0].evaluations[0]
    names = set(evaluation.per_image)
    for entry in result.entries[1:]:
        other = entry.evaluation(evaluation.column)
        if other is not None:
            names &= set(other.per_image)
    unknown = [n for n in choice.names if n not in names]
    if unknown:
        some = ", ".join(sorted(names)[:3]) or "none"
        raise CompareError(
            f"--images: {', '.join(unknown)} not among the {len(names)} images of "
            f"{evaluation.column} that every input was evaluated on (e.g. {some})")
    if evaluation.protocol.get("source") == NNUNET:
        return (f"the reference {result.entries[0].label} is nnU-Net's, whose images and "
                "models condseg does not read; put a condseg run first to draw them")
    root = Path(str(evaluation.protocol.get("data_root", "")))
    if not str(evaluation.protocol.get("data_root", "")) or not root.is_dir():
        return f"the data root {root} of {evaluation.path} is not here"
    if not names:
        return f"the inputs share no image of {evaluation.column}"
    if choice.names:
        return root, list(choice.names)
    if choice.rank is not None:
        return root, ranked_images(result, evaluation.column, names, choice.rank, choice.count)
    return root, evenly_spaced(sorted(names), choice.count)


def evenly_spaced(names: Sequence[str], n: int) -> list[str]:
    """``n`` names spread evenly over the sorted ``names`` (all of them when fewer), so the
    figure shows the same images every time."""
    ordered = sorted(names)
    if len(ordered) <= n:
        return ordered
    index = np.linspace(0, len(ordered) - 1, n).round().astype(int)
    return [ordered[i] for i in index]


def ranked_images(
    result: Comparison, column: str, names: set[str], rank: str, count: int
) -> list[str]:
    """The ``count`` images where the first input's Dice is furthest above (``best``) or below
    (``worst``) the mean Dice of the other inputs on ``column``, most extreme first; with no
    other input, its own highest or lowest Dice. Images without a Dice for every input are not
    ranked; ties go by name."""
    scores = [e.per_image for entry in result.entries
              if (e := entry.evaluation(column)) is not None]
    gains = {}
    for name in names:
        dice = [s[name].get("dice") for s in scores]
        if all(d is not None for d in dice):
            others = dice[1:]
            gains[name] = dice[0] - (sum(others) / len(others) if others else 0.0)
    sign = -1 if rank == "best" else 1
    return sorted(gains, key=lambda n: (sign * gains[n], n))[:count]


def write_figures(
    result: Comparison, figure_dir: Path, chosen: tuple[Path, list[str]] | str,
    curves_x: str = "epoch",
) -> FigureResult:
    """predictions.png/.pdf (the paper's Fig. 2) of the ``chosen`` images and curves.png/.pdf
    (its Fig. 5, against ``curves_x``: :mod:`.curves`), each skipped with a note when nothing
    can be drawn. A pooled row is drawn from its first run (its entry's model and log), as a
    note says."""
    figure_dir.mkdir(parents=True, exist_ok=True)
    written, notes = prediction_figure(result, figure_dir / "predictions.png", chosen)
    more_written, more_notes = curves_figure(result, figure_dir / "curves.png", curves_x)
    first_runs = [f"{entry.label} in the figures is its first run, {entry.pooled[0].source}"
                  for entry in result.entries if entry.n_runs > 1
                  and entry.evaluations[0].protocol.get("source") != NNUNET]
    return written + more_written, notes + more_notes + first_runs


def model_file(entry: Entry) -> Path | None:
    """A run's own final model (inside the run folder, which may have been moved or copied:
    the absolute path its evaluations recorded may be another copy's), else the model file an
    evaluation folder was evaluated with (its protocol's ``model_file``)."""
    candidates = []
    run = entry.run
    if run is not None and run.final_stage is not None:
        stage = run.folder.stage(run.final_stage)
        try:
            recorded = read_result(stage, CompareError, "").get("model_file")
        except (OSError, CompareError):  # damaged (not UTF-8, not JSON, a list, a FIFO):
            recorded = None  # the evaluations' record is the fallback
        if not isinstance(recorded, str):
            recorded = None
        if recorded:  # relative to the run; an older run recorded an absolute path
            candidates += [stage.path / Path(recorded).name, run.path / recorded]
    candidates += [Path(e.protocol["model_file"]) for e in entry.evaluations
                   if e.protocol.get("model_file")]
    return next((p for p in candidates if p.is_file()), candidates[0] if candidates else None)


def predicted_masks(path: Path, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The masks the model file at ``path`` predicts for ``images``: loaded and prepared once
    (the inference engine's fast path, without auxiliary maps, as ``condseg predict``), then
    run over the images in ``condseg predict``'s batches."""
    from condseg.inference.predict import Predictor
    from condseg.models.model_file import load_model

    predictor = Predictor(load_model(path), maps=False)
    return [prediction.mask for start in range(0, len(images), PREDICT_BATCH)
            for prediction in predictor.arrays(images[start:start + PREDICT_BATCH])]


def prediction_figure(
    result: Comparison, out_png: Path, chosen: tuple[Path, list[str]] | str
) -> FigureResult:
    """Image, ground truth and each method's predicted mask for the chosen shared images;
    multi-class masks (class ids) in the colour of each class."""
    from condseg.data.dataset import find_pair, read_image
    from condseg.viz import prediction_grid

    if isinstance(chosen, str):
        return [], [f"predictions.png not written: {chosen}"]
    root, names = chosen
    try:
        read_truth, classes = truth_reader(root, result.classes)
        pairs = [find_pair(root, name) for name in names]
        images = [read_image(image) for image, _ in pairs]
        truths = [read_truth(mask) for _, mask in pairs]
    except CondsegError as exc:
        return [], [f"predictions.png not written: {exc}"]
    notes: list[str] = []
    masks: dict[str, list[np.ndarray]] = {}
    captions: dict[str, list[str]] = {}
    for entry in result.entries:
        path = model_file(entry)
        if path is None or not path.is_file():
            where = "no model file is recorded" if path is None else f"model file {path} not found"
            notes.append(f"{entry.label} left out of predictions.png: {where}")
            continue
        try:
            masks[entry.label] = predicted_masks(path, images)
        except (OSError, ValueError, CondsegError) as exc:
            notes.append(f"{entry.label} left out of predictions.png: {exc}")
            continue
        captions[entry.label] = [caption(m, t, classes)
                                 for m, t in zip(masks[entry.label], truths, strict=True)]
    if not masks:
        return [], [*notes, "predictions.png not written: no model could be loaded"]
    prediction_grid(names, images, truths, masks, out_png, captions=captions, pdf=True,
                    classes=classes)
    result.figure_images = list(names)
    return [out_png, out_png.with_suffix(".pdf")], notes


def truth_reader(
    root: Path, classes: tuple[str, ...] | None
) -> tuple[Callable[[Path], np.ndarray], tuple[str, ...] | None]:
    """How to read a ground-truth mask of ``root`` (binary, or class ids by its
    ``labels.json``) and its class names (None: binary); a dataset whose declaration is not the
    evaluations' ``classes`` is refused (CondsegError)."""
    from condseg.data.dataset import read_mask
    from condseg.data.labels import read_class_mask, read_labels, require_binary

    if classes is None:
        require_binary(root)
        return read_mask, None
    labels = read_labels(root)
    # the evaluations' classes, recorded with the background or without it
    if labels is None or classes not in (labels.names, labels.names[1:]):
        declared = ", ".join(labels.names) if labels is not None else "none"
        raise CompareError(f"dataset {root} declares classes {declared}, not the evaluations' "
                           f"{', '.join(classes)}")
    return (lambda path: read_class_mask(path, labels)), labels.names


def caption(mask: np.ndarray, truth: np.ndarray, classes: tuple[str, ...] | None) -> str:
    """``Dice 81.2`` of one predicted mask: binary, or the foreground-mean of class ids."""
    score = dice(mask, truth) if classes is None else class_dice(mask, truth, len(classes))
    return f"Dice {MISSING if score is None else f'{100 * score:.1f}'}"


def dice(mask: np.ndarray, truth: np.ndarray) -> float:
    """The evaluation's Dice (:func:`~condseg.evaluation.overlap.overlap_scores`) of one mask."""
    scores = overlap_scores(torch.as_tensor(mask)[None], torch.as_tensor(truth)[None])
    return float(scores["dice"][0])


def class_dice(mask: np.ndarray, truth: np.ndarray, n_classes: int) -> float | None:
    """The evaluation's foreground-mean Dice of class ids
    (:func:`~condseg.evaluation.overlap.class_scores`): each foreground class present in the
    truth or the prediction, ignored pixels counting for nothing; None when no class is."""
    from condseg.data.labels import IGNORE_ID

    mask = np.where(truth == IGNORE_ID, 0, mask)  # counts for nothing, whatever it holds there
    confusion = class_confusion(torch.as_tensor(mask)[None], torch.as_tensor(truth)[None],
                                n_classes)
    scores = class_scores(confusion)["dice"][0]
    present = ~scores.isnan()
    return float(scores[present].mean()) if present.any() else None
