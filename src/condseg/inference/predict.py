"""Prediction on new images at their original resolution.

The network sees the image resized to its training size and normalised as in training (both
read from the model file's header); its probabilities are resized back to the image's own size,
so masks line up with the input pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from condseg.data.dataset import IMAGE_EXTENSIONS, DataError, read_image
from condseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_image, to_tensor
from condseg.viz import overlay as make_overlay
from condseg.viz import save_png, save_sid_maps, sid_map_paths

SID_KEYS = ("fg", "bg", "uc")


@dataclass
class Prediction:
    """One image's result: ``prob`` (H, W) float32, ``mask`` bool, SID ``maps`` (or empty)."""

    prob: np.ndarray
    mask: np.ndarray
    maps: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class PredictReport:
    """What :func:`predict_files` wrote, and each input it could not use with the reason."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def normalisation(model: nn.Module) -> tuple[Sequence[float] | None, Sequence[float] | None]:
    """Mean and std of the model file (None: scale to [0, 1] only); ImageNet's for a freshly
    created model."""
    meta = getattr(model, "meta", None) or {}
    if "mean" in meta:
        return meta["mean"], meta["std"]
    return IMAGENET_MEAN, IMAGENET_STD


def model_input_size(model: nn.Module, size: int | Sequence[int] | None = None) -> tuple[int, int]:
    """The network input (H, W): ``size`` if given, else the model file's trained size;
    checked against the model's ``input_divisor``."""
    if size is None:
        meta = getattr(model, "meta", None) or {}
        if "input_size" not in meta:
            raise ValueError(
                "an input size is required for a model that was not loaded from a model file"
            )
        size = meta["input_size"]
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    divisor = int(getattr(model, "input_divisor", 1))
    if height % divisor or width % divisor:
        raise ValueError(f"input size {height}x{width} is not a multiple of {divisor}")
    return height, width


def network_size(model: nn.Module, shape: Sequence[int]) -> tuple[int, int]:
    """The (H, W) the network sees for an image of ``shape``: the trained input size, else the
    image size rounded to the nearest multiple of the model's ``input_divisor``."""
    if "input_size" in (getattr(model, "meta", None) or {}):
        return model_input_size(model)
    divisor = int(getattr(model, "input_divisor", 32))
    height, width = (max(divisor, round(int(n) / divisor) * divisor) for n in shape[:2])
    return height, width


@contextmanager
def eval_mode(model: nn.Module, inference: bool = True) -> Iterator[None]:
    """Run in eval mode (BatchNorm running statistics) and restore the caller's mode after;
    ``inference=False`` keeps autograd's tracing machinery available (ONNX export)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(inference):
            yield
    finally:
        model.train(was_training)


def forward_probs(model: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Probabilities (B, H, W) of the mask and, for ConDSeg, of the SID maps fg / bg / uc.

    Call inside :func:`eval_mode`. Outputs are recognised by duck typing: a tensor is the mask;
    a ConDSegOutput carries ``mask`` plus the three maps.
    """
    from condseg.models.registry import mask_logits

    device = _device(model)
    out = model(batch.to(device=device, dtype=torch.float32))
    probs = {"mask": mask_logits(out)}
    for key in SID_KEYS:
        logits = getattr(out, key, None)
        if logits is not None:
            probs[key] = logits
    return {key: torch.sigmoid(logits.float())[:, 0].cpu() for key, logits in probs.items()}


def predict(model: nn.Module, image: np.ndarray | str | Path, threshold: float = 0.5) -> Prediction:
    """Predict one image (a path, or a uint8 RGB array (H, W, 3)) at its original size."""
    array = read_image(image) if isinstance(image, (str, Path)) else image
    return predict_arrays(model, [array], threshold)[0]


def predict_arrays(
    model: nn.Module, images: Sequence[np.ndarray], threshold: float = 0.5
) -> list[Prediction]:
    """Predict several RGB images in one forward pass per distinct network size."""
    mean, std = normalisation(model)
    sizes = [network_size(model, _check_rgb(image).shape) for image in images]
    results: dict[int, Prediction] = {}
    with eval_mode(model):
        for size in dict.fromkeys(sizes):
            indices = [i for i, s in enumerate(sizes) if s == size]
            batch = torch.stack(
                [to_tensor(resize_image(images[i], size), mean, std) for i in indices]
            )
            probs = forward_probs(model, batch)
            for j, i in enumerate(indices):
                results[i] = to_original_size(
                    {key: p[j] for key, p in probs.items()}, images[i].shape[:2], threshold
                )
    return [results[i] for i in range(len(images))]


def predict_files(
    model: nn.Module,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    overlay: bool = False,
    maps: bool = False,
    batch_size: int = 4,
    threshold: float = 0.5,
    overwrite: bool = False,
) -> PredictReport:
    """Predict image files and folders (all their images, sorted) into ``out_dir``.

    Writes ``<name>.png`` (0/255 mask), with ``overlay`` also ``<name>_overlay.png``, with
    ``maps`` also ``<name>_fg.png``/``_bg.png``/``_uc.png`` heat maps. An input that cannot be
    used (missing, undecodable, a second file with the same name) is recorded in
    ``report.failed`` and the others are still written. If any output file exists already,
    nothing is written and FileExistsError is raised, unless ``overwrite`` is set.
    """
    report = PredictReport()
    jobs = _plan(inputs, report)
    out_dir = Path(out_dir)
    outputs = {name: _output_paths(out_dir, name, overlay, maps) for name in jobs}
    refuse_existing([p for paths in outputs.values() for p in paths], overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(jobs)
    for start in range(0, len(names), batch_size):
        loaded: list[tuple[str, np.ndarray]] = []
        for name in names[start : start + batch_size]:
            try:
                loaded.append((name, read_image(jobs[name])))
            except (DataError, OSError) as exc:
                report.failed.append((jobs[name], str(exc)))
        predictions = predict_arrays(model, [image for _, image in loaded], threshold)
        if maps and predictions and not predictions[0].maps:
            raise ValueError(
                f"the model {_model_name(model)} produces no SID maps; drop the maps option"
            )
        for (name, image), pred in zip(loaded, predictions, strict=True):
            report.written.append(save_png(outputs[name][0], pred.mask.astype(np.uint8) * 255))
            if overlay:
                report.written.append(save_png(outputs[name][1], make_overlay(image, pred.mask)))
            if maps:
                report.written.extend(save_sid_maps(pred.maps, out_dir, name))
    return report


def refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    """Raise before writing anything if an output would replace an existing file."""
    if overwrite:
        return
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        shown = ", ".join(existing[:5]) + (
            f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        )
        raise FileExistsError(
            f"{len(existing)} output file(s) exist already: {shown}; choose another output folder "
            "or pass overwrite=True (CLI: --overwrite)"
        )


def _plan(inputs: Iterable[str | Path], report: PredictReport) -> dict[str, Path]:
    """Output name → input file, expanding folders; unusable inputs go to ``report.failed``."""
    jobs: dict[str, Path] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(
                p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not files:
                report.failed.append(
                    (item, f"folder has no image files ({', '.join(IMAGE_EXTENSIONS)})")
                )
        elif item.is_file():
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


def _output_paths(out_dir: Path, name: str, overlay: bool, maps: bool) -> list[Path]:
    """Mask first, then overlay, then SID maps — the order :func:`predict_files` relies on."""
    paths = [out_dir / f"{name}.png"]
    if overlay:
        paths.append(out_dir / f"{name}_overlay.png")
    if maps:
        paths.extend(sid_map_paths(out_dir, name, SID_KEYS).values())
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
        raise ValueError(
            f"predict needs a uint8 RGB array (H, W, 3) or an image path, got {described}; "
            "use condseg.data.dataset.read_image to load other formats"
        )
    return image


def to_original_size(
    probs: dict[str, torch.Tensor], shape: Sequence[int], threshold: float = 0.5
) -> Prediction:
    """Bilinear resize of one image's probability maps ((H, W) tensors keyed ``mask``, and
    optionally fg/bg/uc) back to the image size ``shape``, then threshold the mask."""
    size = (int(shape[0]), int(shape[1]))
    stacked = torch.stack(list(probs.values()))[None].float()
    if tuple(stacked.shape[-2:]) != size:
        stacked = F.interpolate(stacked, size=size, mode="bilinear", align_corners=False)
    arrays = dict(zip(probs, stacked[0].clamp(0, 1).numpy().astype(np.float32), strict=True))
    prob = arrays.pop("mask")
    return Prediction(prob=prob, mask=prob >= threshold, maps=arrays)


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _model_name(model: nn.Module) -> str:
    return str((getattr(model, "arch", None) or {}).get("name", type(model).__name__))
