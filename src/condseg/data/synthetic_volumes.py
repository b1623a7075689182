"""Synthetic data in nnU-Net v2's raw format (``data synth --format nnunet``): the 3-D
``volumes`` task and the 2-D tasks written as an nnU-Net dataset.

A volume is an MRI-like grey cube holding one gland (class 1, ``gland``: a smooth ellipsoid
with a wavy surface) and, inside it, a darker core (class 2, ``core``) off its centre — the
shape of the Decathlon's prostate (PZ/TZ) or brain-tumour (edema/core) tasks, small enough for
a CPU. Intensities carry a bias field, texture and noise, so the classes are told apart by
shape and context as much as by grey level.

The layout is nnU-Net's (its documentation, "dataset_format"): ``dataset.json``,
``imagesTr/<case>_0000<ending>`` and ``labelsTr/<case><ending>`` for the training cases (nnU-Net
makes its own 5 folds from them), ``imagesTs/`` and ``labelsTs/`` for the held-out ones. 3-D
cases are TIFF stacks with a ``<case>.json`` spacing file beside each (nnU-Net's ``Tiff3DIO``),
2-D cases PNG (its ``NaturalImage2DIO``), so writing needs neither nnU-Net nor a NIfTI library.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import tifffile

from condseg.data.labels import Labels
from condseg.files import write_bytes, write_image, write_text

#: The classes of the volumes task (label values = class ids).
VOLUME_LABELS = Labels(("background", "gland", "core"), (0, 1, 2))
#: Voxel spacing written for every volume (z, y, x), in millimetres.
SPACING = (1.0, 1.0, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Noise in [-1, 1] varying over ``cells`` cells per side (separable cubic upsampling)."""
    coarse = rng.uniform(-1.0, 1.0, (cells + 1,) * 3).astype(np.float32)
    grid = np.linspace(0, cells, size)
    for axis in range(3):
        coarse = np.apply_along_axis(lambda line: np.interp(grid, np.arange(cells + 1), line),
                                     axis, coarse)
    return coarse


def volume_pair(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """One (uint8 grey volume, uint8 class-id volume) pair of side ``size``, ids as
    :data:`VOLUME_LABELS`."""
    axes = np.meshgrid(*(np.arange(size, dtype=np.float32),) * 3, indexing="ij")
    centre = size * rng.uniform(0.4, 0.6, 3)
    radii = size * rng.uniform(0.22, 0.32, 3)
    distance = np.sqrt(sum(((a - c) / r) ** 2 for a, c, r in zip(axes, centre, radii,
                                                                    strict=True)))
    gland = distance + 0.12 * _smooth_noise(rng, size, 3) < 1.0
    offset = rng.uniform(-0.25, 0.25, 3) * radii
    core_radii = radii * rng.uniform(0.35, 0.55, 3)
    core_distance = np.sqrt(sum(((a - c - o) / r) ** 2 for a, c, o, r in zip(
        axes, centre, offset, core_radii, strict=True)))
    ids = np.zeros((size,) * 3, np.uint8)
    ids[gland] = 1
    ids[gland & (core_distance + 0.15 * _smooth_noise(rng, size, 4) < 1.0)] = 2

    levels = np.array([0.25, 0.62, 0.4]) + rng.uniform(-0.04, 0.04, 3)
    image = levels[ids].astype(np.float32)
    image *= 1.0 + 0.12 * _smooth_noise(rng, size, 2)  # bias field
    image += 0.06 * _smooth_noise(rng, size, max(2, size // 4))  # texture
    image = np.stack([cv2.GaussianBlur(plane, (0, 0), 0.7) for plane in image])
    image += rng.normal(0.0, 0.04, image.shape).astype(np.float32)
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8), ids


def _write_tiff(path: Path, volume: np.ndarray) -> None:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, volume, compression="zlib")
    write_bytes(path, buffer.getbuffer())


def write_nnunet(
    out: Path,
    pair: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]],
    labels: Labels,
    names: tuple[list[str], list[str]],
    seed: int,
    volumetric: bool,
) -> None:
    """Write the cases ``names`` (training, held out) made by ``pair`` (volumes when
    ``volumetric``, else 2-D images) in nnU-Net's raw layout, case ``_i`` from the seed
    ``[seed, i]``."""
    ending = ".tif" if volumetric else ".png"
    for images, masks, cases in (("imagesTr", "labelsTr", names[0]),
                                 ("imagesTs", "labelsTs", names[1])):
        for folder in (images, masks):
            (out / folder).mkdir(parents=True, exist_ok=True)
        for case in cases:
            image, ids = pair(np.random.default_rng([seed, int(case.rsplit("_", 1)[1])]))
            if volumetric:
                _write_tiff(out / images / f"{case}_0000.tif", image)
                _write_tiff(out / masks / f"{case}.tif", ids)
                spacing = json.dumps({"spacing": list(SPACING)}) + "\n"
                write_text(out / images / f"{case}.json", spacing)
                write_text(out / masks / f"{case}.json", spacing)
            else:
                write_image(out / images / f"{case}_0000.png", image)
                write_image(out / masks / f"{case}.png", ids)
    dataset = {
        "channel_names": {"0": "MRI" if volumetric else "grey"},
        "labels": dict(zip(labels.names, labels.values, strict=True)),
        "numTraining": len(names[0]),
        "file_ending": ending,
        "overwrite_image_reader_writer": "Tiff3DIO" if volumetric else "NaturalImage2DIO",
        "name": "condseg synthetic " + ("volumes" if volumetric else "layers"),
        "description": "synthetic, written by condseg data synth (seeded); not real data",
    }
    write_text(out / "dataset.json", json.dumps(dataset, indent=2) + "\n")
