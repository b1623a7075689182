"""What a mask's values mean: a grey level per pixel, foreground from half of the format's
range up, and the value distributions that are not usable for training (a 0/1 label map, an
empty or full mask, soft labels). Shared by the dataset, ``data check`` and the converters."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from condseg.data.reading import colour_and_alpha, read_values

Level = Literal["error", "warning", "info"]

# Share of mask pixels in the middle half of the range above which a mask is not a clean binary
# mask (soft labels, probability maps, heavy resampling). Kvasir-SEG's JPEG masks have 0.0%.
MID_GREY_LIMIT = 0.02
# Share of pixels at a low non-zero value above which an "empty" mask is a 0/1 (or 0..k) label
# map rather than a background-only mask.
LABEL_MAP_LIMIT = 0.001


def read_mask_values(path: str | Path, max_pixels: int | None = None) -> tuple[np.ndarray, int]:
    """Grey mask values (H, W) and the format's full scale.

    Colour masks are reduced by the maximum over channels, not luminance, so a mask drawn in
    pure red or blue is still foreground (luminance of pure blue is only 29 of 255). A mask with
    transparency is read as displayed over black (transparent is background), except when every
    pixel has the same colour: the alpha plane is then the mask (a mask drawn only in alpha).
    """
    values, full = read_values(path, "mask", max_pixels)
    values, alpha = colour_and_alpha(values, full)
    if alpha is not None:
        if (values == values.flat[0]).all():
            values = alpha
        else:
            weight = alpha[:, :, None] if values.ndim == 3 else alpha
            values = ((values.astype(np.uint32) * weight + full // 2) // full).astype(alpha.dtype)
    if values.ndim == 3:  # elementwise maximum of the planes is ~10x faster than max(axis=2)
        values = np.maximum.reduce([values[:, :, c] for c in range(values.shape[2])])
    return values, full


def mask_threshold(full: int) -> int:
    """Smallest foreground value: half of the format's range (128 for 8 bit, 32768 for 16 bit)."""
    return (full + 1) // 2


def read_mask(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Boolean (H, W) mask: foreground where the value is at least half of the format's range,
    so JPEG artefacts around 0 and 255 binarise correctly."""
    values, full = read_mask_values(path, max_pixels)
    return values >= mask_threshold(full)


def mask_problems(values: np.ndarray, full: int) -> list[tuple[Level, str]]:
    """Is the foreground/background distribution usable for training? (One histogram pass.)"""
    threshold = mask_threshold(full)
    hist = np.bincount(values.ravel(), minlength=full + 1) / values.size
    foreground = float(hist[threshold:].sum())
    top = int(np.flatnonzero(hist)[-1])
    found: list[tuple[Level, str]] = []
    if foreground == 0.0 and top > 0 and hist[max(1, top // 2) :].sum() > LABEL_MAP_LIMIT:
        found.append(
            (
                "error",
                f"mask values go only up to {top} of {full}, so no pixel is foreground "
                f"(foreground is >= {threshold}): a 0/1 label map? Save it as 0/{full}",
            )
        )
    elif foreground == 0.0:
        found.append(("warning", "mask is empty (no foreground): fine for a negative example"))
    elif foreground == 1.0:
        found.append(("warning", "mask is entirely foreground: inverted or blank annotation?"))
    # The middle half of the range, never its ends: a 1-bit mask (0 and 1) has no mid-grey.
    mid = float(hist[max(1, round(full * 0.25)) : min(full - 1, round(full * 0.75)) + 1].sum())
    if mid > MID_GREY_LIMIT:
        found.append(
            (
                "warning",
                f"{mid:.0%} of mask pixels are mid-grey (soft or resampled mask); they are "
                f"binarised at {threshold}. Re-export a binary mask if that is wrong",
            )
        )
    return found
