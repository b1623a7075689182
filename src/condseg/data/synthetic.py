"""A small endoscopy-like dataset generated on the fly for the demo and the tests (the binary
task ``lesions``; the multi-class ``layers`` task: :mod:`condseg.data.synthetic_layers`).

It reproduces the two difficulties ConDSeg targets: lesions with soft boundaries and low contrast
against the mucosa, and several co-occurring entities per image (1-3 lesions, plus folds and
specular highlights that are not lesions). Each image is drawn from its own seeded generator,
so the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from condseg.config import MAX_SEED
from condseg.data.labels import write_labels
from condseg.data.split_files import write_split
from condseg.data.synthetic_layers import LAYER_LABELS, layers_pair
from condseg.errors import DataError
from condseg.files import write_image, write_text
from condseg.layout import DatasetDir

MAX_SIZE = 4096  # a side: 48 MB a float image while drawing, a demo's data is 64-256
MAX_VOLUME_SIZE = 256  # a volume's side: 64 MB a float volume while drawing
MAX_IMAGES = 100_000  # of a split: a synthetic set is for demos and tests

#: nnU-Net's cross-validation folds: a dataset in its format needs as many training cases.
NNUNET_FOLDS = 5


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random coarse grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _blob(rng: np.random.Generator, size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """Binary (size, size) irregular blob: a polar radius with a few random harmonics."""
    theta = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
    r = np.ones_like(theta)
    for k in (2, 3, 5):
        r += rng.uniform(0.0, 0.25 / k * 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    stretch = rng.uniform(0.7, 1.0)
    angle = rng.uniform(0, np.pi)
    x, y = radius * r * np.cos(theta), radius * stretch * r * np.sin(theta)
    points = np.stack(
        [
            centre[0] + x * np.cos(angle) - y * np.sin(angle),
            centre[1] + x * np.sin(angle) + y * np.cos(angle),
        ],
        axis=1,
    )
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return mask


def synthesize_pair(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One (uint8 RGB image, uint8 {0, 255} mask) pair."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    texture = 0.6 * _smooth_noise(rng, size, 4) + 0.4 * _smooth_noise(rng, size, 12)
    base = np.array([0.78, 0.42, 0.36]) + rng.uniform(-0.06, 0.06, 3)
    image = base[None, None, :] * (1.0 + 0.12 * texture[..., None])

    # Mucosal folds: soft dark bands, an entity that is not a lesion.
    for _ in range(rng.integers(0, 3)):
        phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.2)
        offset, amplitude = rng.uniform(0.1, 0.9), rng.uniform(0.03, 0.12)
        band = np.abs(yy - offset - amplitude * np.sin(freq * 2 * np.pi * xx + phase))
        image *= 1.0 - 0.15 * np.exp(-((band / 0.05) ** 2))[..., None]

    mask = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(1, 4)):
        radius = size * rng.uniform(0.07, 0.22)
        centre = rng.uniform(0.25, 0.75, 2) * size
        hard = _blob(rng, size, centre, radius).astype(np.float32)
        # Soft boundary: the lesion fades in over a width proportional to its size; the label
        # is the half-way contour of that fade.
        sigma = max(1.0, radius * rng.uniform(0.15, 0.35))
        alpha = cv2.GaussianBlur(hard, (0, 0), sigma)
        # Low contrast: slightly paler and pinker than the mucosa, lit as a dome from one side.
        light = rng.uniform(0, 2 * np.pi)
        dome = np.cos(light) * (xx * size - centre[0]) + np.sin(light) * (yy * size - centre[1])
        shade = 1.0 + rng.uniform(0.06, 0.16) + 0.12 * np.clip(dome / radius, -1.5, 1.5)
        tint = np.array([0.0, rng.uniform(0.0, 0.06), rng.uniform(0.0, 0.06)])
        lesion = (base + tint)[None, None, :] * shade[..., None]
        lesion *= 1.0 + 0.1 * _smooth_noise(rng, size, 24)[..., None]
        image = image * (1 - alpha[..., None]) + lesion * alpha[..., None]
        mask = np.maximum(mask, alpha)

    # Specular highlights on lesions and mucosa alike.
    highlights = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(2, 7)):
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        axes = (int(rng.integers(1, 4)), int(rng.integers(1, 3)))
        cv2.ellipse(highlights, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    highlights = cv2.GaussianBlur(highlights, (0, 0), 1.0)
    image = image + highlights[..., None] * (1.0 - image)

    vignette = 1.0 - 0.55 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.5
    image = image * vignette[..., None]
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), rng.uniform(0.5, 1.2))
    image = image + rng.normal(0.0, 0.01, image.shape)
    image_u8 = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    return image_u8, np.where(mask >= 0.5, 255, 0).astype(np.uint8)


#: The synthetic tasks: the binary endoscopy-like lesions (the default), the OCT-like layers and
#: the MRI-like volumes (3-D, nnU-Net's format only: :mod:`condseg.data.synthetic_volumes`).
TASKS = ("lesions", "layers", "volumes")
#: The formats written: condseg's canonical layout, or nnU-Net v2's raw dataset.
FORMATS = ("condseg", "nnunet")
_TASK_FORMATS = {"lesions": ("condseg",), "layers": FORMATS, "volumes": ("nnunet",)}


def synthesize(
    out: str | Path,
    n_train: int = 48,
    n_val: int = 16,
    size: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    task: str = "lesions",
    format: str = "condseg",
) -> Path:
    """Write ``out/images/*.png``, ``out/masks/*.png``, ``train.txt``, ``val.txt`` and
    ``synth.json`` (the parameters); the ``layers`` task also ``labels.json`` (its classes).
    ``format="nnunet"`` writes nnU-Net's raw dataset instead (``layers`` and ``volumes``; the
    training images as its training cases, the validation ones held out in ``imagesTs``).
    Refuses a non-empty ``out`` unless ``overwrite``."""
    if task not in TASKS:
        raise DataError(f"unknown synthetic task {task!r} (--task); choose one of "
                        f"{', '.join(TASKS)}")
    if format not in FORMATS:
        raise DataError(f"unknown format {format!r} (--format); choose one of "
                        f"{', '.join(FORMATS)}")
    if format not in _TASK_FORMATS[task]:
        raise DataError(f"--task {task} cannot be written as --format {format}: volumes need "
                        "--format nnunet, lesions --format condseg (layers take either)")
    if size is None:
        size = 32 if task == "volumes" else 128
    most_size = MAX_VOLUME_SIZE if task == "volumes" else MAX_SIZE
    for name, value, least, most in (("train", n_train, 1, MAX_IMAGES), ("val", n_val, 1,
                                      MAX_IMAGES), ("size", size, 8, most_size),
                                      ("seed", seed, 0, MAX_SEED)):
        if not (isinstance(value, int) and least <= value <= most):
            raise DataError(f"{name} (--{name}) must be an integer from {least} to {most}; got "
                            f"{value!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; give a folder to write the synthetic dataset into")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(
            f"{out} is not empty; choose an empty folder or pass --overwrite (overwrite=True) "
            "to replace a previous synthetic dataset"
        )
    if format == "nnunet" and n_train < NNUNET_FOLDS:
        raise DataError(f"train (--train) must be at least {NNUNET_FOLDS} for --format nnunet "
                        f"(nnU-Net splits the training cases into {NNUNET_FOLDS} folds); got "
                        f"{n_train}")
    if format == "nnunet":
        return _synthesize_nnunet(out, task, n_train, n_val, size, seed)
    layout = DatasetDir(out)
    for folder in (layout.images, layout.masks):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("synth_*.png"):
            stale.unlink()
    layout.labels.unlink(missing_ok=True)  # a previous task's classes
    names = [f"synth_{i:04d}" for i in range(n_train + n_val)]
    for i, name in enumerate(names):
        rng = np.random.default_rng([seed, i])
        if task == "layers":  # grey B-scan and class-id mask
            image, mask = layers_pair(rng, size)
        else:
            image, mask = synthesize_pair(rng, size)
            image = np.ascontiguousarray(image[:, :, ::-1])
        write_image(layout.images / f"{name}.png", image)
        write_image(layout.masks / f"{name}.png", mask)
    write_split(layout.split("train"), names[:n_train])
    write_split(layout.split("val"), names[n_train:])
    if task == "layers":
        write_labels(out, LAYER_LABELS)
    info = {
        "generator": "condseg.data.synthetic",
        "task": task,
        "seed": seed,
        "size": size,
        "n_train": n_train,
        "n_val": n_val,
    }
    write_text(out / "synth.json", json.dumps(info, indent=2) + "\n")
    return out


def _synthesize_nnunet(out: Path, task: str, n_train: int, n_val: int, size: int,
                       seed: int) -> Path:
    from condseg.data.synthetic_volumes import VOLUME_LABELS, volume_pair, write_nnunet

    pair, labels = ((volume_pair, VOLUME_LABELS) if task == "volumes"
                    else (layers_pair, LAYER_LABELS))
    names = [f"synth_{i:04d}" for i in range(n_train + n_val)]
    write_nnunet(out, lambda rng: pair(rng, size), labels, (names[:n_train], names[n_train:]),
                 seed, volumetric=task == "volumes")
    info = {"generator": "condseg.data.synthetic", "task": task, "format": "nnunet",
            "seed": seed, "size": size, "n_train": n_train, "n_val": n_val}
    write_text(out / "synth.json", json.dumps(info, indent=2) + "\n")
    return out
