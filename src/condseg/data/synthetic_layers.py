"""An OCT-like B-scan with three labelled layers, the embedded multi-class task
(``data synth --task layers``).

Named after the retinal layers of the GOALS challenge: a bright nerve-fibre layer (RNFL), the
ganglion-cell/inner-plexiform layer below it (GCIPL) and, below unlabelled retina and a bright
pigment line, the textured choroid. The boundaries are smooth waves with per-column jitter,
so a band's thickness varies along the scan; the grey values carry multiplicative speckle and
the unlabelled tissue between GCIPL and choroid is not much darker than the layers, so the
classes are told apart by order and texture, not by a threshold.
"""

from __future__ import annotations

from itertools import pairwise

import cv2
import numpy as np

from condseg.data.labels import Labels

#: The classes of the layers task, written as index masks (value = class id).
LAYER_LABELS = Labels(("background", "rnfl", "gcipl", "choroid"), (0, 1, 2, 3))


def _wave(rng: np.random.Generator, size: int, amplitude: float) -> np.ndarray:
    """A smooth curve over the columns, in pixels: one random sine plus coarse noise."""
    x = np.linspace(0.0, 1.0, size)
    sine = np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * x + rng.uniform(0, 2 * np.pi))
    coarse = np.interp(x, np.linspace(0.0, 1.0, 5), rng.uniform(-1.0, 1.0, 5))
    return amplitude * size * (0.7 * sine + 0.3 * coarse)


def layers_pair(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One (uint8 grey B-scan, uint8 class-id mask) pair; ids as :data:`LAYER_LABELS`."""
    top = size * rng.uniform(0.18, 0.3) + _wave(rng, size, 0.06)
    # Thickness of RNFL, GCIPL, the unlabelled retina below them and the choroid (fractions).
    spans = [(0.05, 0.09), (0.06, 0.1), (0.1, 0.16), (0.1, 0.16)]
    edges = [top]
    for low, high in spans:
        thickness = size * rng.uniform(low, high) * (1.0 + _wave(rng, size, 0.25) / size)
        edges.append(edges[-1] + np.maximum(thickness, 2.0))
    edges = [e + np.clip(rng.normal(0.0, 0.5, size), -0.9, 0.9) for e in edges]  # jitter
    rows = np.arange(size, dtype=np.float64)[:, None]
    band = [(rows >= a[None, :]) & (rows < b[None, :]) for a, b in pairwise(edges)]
    ids = np.zeros((size, size), np.uint8)
    for class_id, where in ((1, band[0]), (2, band[1]), (3, band[3])):
        ids[where] = class_id

    below = rows >= edges[-1][None, :]
    # Grey levels of RNFL, GCIPL, the unlabelled retina, the choroid and the tissue below.
    levels = np.array([0.72, 0.45, 0.32, 0.5, 0.2]) + rng.uniform(-0.05, 0.05, 5)
    image = np.full((size, size), 0.06 + rng.uniform(-0.03, 0.03))  # vitreous above
    for where, level in zip((*band, below), levels, strict=True):
        image[where] = level
    # The pigment line on top of the choroid, and the choroid's vessels (dark blobs).
    image[np.abs(rows - edges[3][None, :]) < 1.2] = 0.85
    vessels = cv2.resize(rng.uniform(0.0, 1.0, (size // 8 + 1, size // 4 + 1)), (size, size),
                         interpolation=cv2.INTER_CUBIC)
    image = np.where(band[3], image * (0.7 + 0.5 * vessels), image)
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.8)
    speckle = rng.gamma(4.0, 0.25, (size, size)).astype(np.float32)  # mean 1
    image = image * speckle + rng.normal(0.0, 0.02, (size, size))
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8), ids
