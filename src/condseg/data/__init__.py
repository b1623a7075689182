"""Data pipeline: the canonical folder dataset, augmentations, checks, converters, synthetic data.

Layout: ``ROOT/images/<name>.<ext>``, ``ROOT/masks/<name>.<ext>``, ``ROOT/<split>.txt``.
"""

from __future__ import annotations

from condseg.data.check import CheckReport, Problem, check_dataset
from condseg.data.dataset import (
    MAX_PIXELS,
    DataError,
    SegmentationDataset,
    find_pair,
    image_files,
    read_image,
    read_mask,
    read_split,
    write_split,
)
from condseg.data.prepare import DATASETS, prepare, prepare_folder
from condseg.data.synthetic import synthesize
from condseg.data.transforms import geometric_augmentation, strong_photometric

__all__ = [
    "DATASETS",
    "MAX_PIXELS",
    "CheckReport",
    "DataError",
    "Problem",
    "SegmentationDataset",
    "check_dataset",
    "find_pair",
    "geometric_augmentation",
    "image_files",
    "prepare",
    "prepare_folder",
    "read_image",
    "read_mask",
    "read_split",
    "strong_photometric",
    "synthesize",
    "write_split",
]
