"""Network inputs of image files, decoded, resized and normalised in DataLoader workers so that
the model never waits on decoding.

:class:`InputPlan` is the one rule turning an RGB image into the network's input (prediction,
the original-resolution evaluation and the Python API apply it, in the main process or in a
worker); :class:`ImageFiles` applies it to files and reports an unreadable one instead of
raising, so the other images are still predicted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from condseg.data.dataset import read_image, read_mask
from condseg.data.labels import Labels, read_class_mask
from condseg.data.transforms import resize_image, to_tensor
from condseg.errors import DataError, OptionError

#: At most this many loading workers by default: decoding a batch is far cheaper than the
#: network's pass over it, so more only take cores from the model.
MAX_DEFAULT_WORKERS = 4


def usable_cores() -> int:
    """The cores this process may run on (not the machine's: containers and taskset limit it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """One worker per core this process may use, less the one the model's main thread needs,
    at most :data:`MAX_DEFAULT_WORKERS`."""
    return max(0, min(MAX_DEFAULT_WORKERS, usable_cores() - 1))


@dataclass(frozen=True)
class InputPlan:
    """``size``: the network input (H, W) of every image (the model file's trained size), or
    None to round each image's own size to a multiple of ``divisor``. An image with a side
    longer than ``sliding_window`` keeps its own size (it is predicted window by window).
    ``mean``/``std``: the normalisation (None: scale to [0, 1] only)."""

    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    size: tuple[int, int] | None
    divisor: int = 1
    sliding_window: int | None = None

    def network_size(self, shape: Sequence[int]) -> tuple[int, int]:
        if self.sliding_window is not None and max(shape[:2]) > self.sliding_window:
            return int(shape[0]), int(shape[1])
        if self.size is not None:
            return self.size
        d = self.divisor
        height, width = (max(d, round(int(n) / d) * d) for n in shape[:2])
        return height, width

    def tensor(self, image: np.ndarray) -> torch.Tensor:
        """The normalised float32 (3, h, w) network input of a uint8 RGB (H, W, 3) image."""
        return to_tensor(resize_image(image, self.network_size(image.shape)), self.mean, self.std)


class ImageFiles(Dataset):
    """Item ``i``: ``{"index", "input", "shape"}`` (plus ``"image"``, the decoded RGB array,
    with ``keep_images``; plus ``"mask"``, the original boolean mask, when ``masks`` are given
    — its class ids (uint8) by the declaration ``labels`` when given), or ``{"index", "error"}``
    when the file cannot be used."""

    def __init__(
        self,
        files: Sequence[Path],
        plan: InputPlan,
        *,
        masks: Sequence[Path] | None = None,
        keep_images: bool = False,
        max_pixels: int | None = None,
        labels: Labels | None = None,
    ) -> None:
        self.files, self.masks, self.plan, self.labels = list(files), masks, plan, labels
        self.keep_images, self.max_pixels = keep_images, max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            image = read_image(self.files[i], self.max_pixels)
            item = {"index": i, "input": self.plan.tensor(image), "shape": image.shape[:2]}
            if self.masks is not None:
                mask = (read_mask(self.masks[i], self.max_pixels) if self.labels is None
                        else read_class_mask(self.masks[i], self.labels, self.max_pixels))
                if mask.shape != image.shape[:2]:
                    raise DataError(f"image {self.files[i]} and mask {self.masks[i]} differ in "
                                    "size; fix the pair or leave it out")
                item["mask"] = mask
        except (DataError, OSError) as exc:
            return {"index": i, "error": str(exc)}
        if self.keep_images:
            item["image"] = image
        return item


def check_batching(batch_size: int, workers: int | None) -> None:
    """Refuse a batch size below 1 or a negative number of workers (before anything is
    written)."""
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise OptionError(f"batch size (--batch-size) must be an integer >= 1; got "
                          f"{batch_size!r}")
    if workers is not None and not (isinstance(workers, int) and workers >= 0):
        raise OptionError(f"workers (--workers) must be an integer >= 0 (0: load in this "
                          f"process); got {workers!r}")


def batches(
    dataset: Dataset, batch_size: int, workers: int | None = None, pin_memory: bool = False
) -> DataLoader:
    """Lists of ``batch_size`` items in order, loaded by ``workers`` processes (None:
    :func:`default_workers`; 0: in this process). Workers start only when there is more than
    one batch to overlap with the model."""
    check_batching(batch_size, workers)
    workers = default_workers() if workers is None else workers
    if len(dataset) <= batch_size:  # type: ignore[arg-type]
        workers = 0
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=list, pin_memory=pin_memory)
