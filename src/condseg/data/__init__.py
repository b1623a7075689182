"""Data pipeline: the canonical folder dataset, augmentations, checks, converters, synthetic data.

Layout (:class:`condseg.layout.DatasetDir`): ``ROOT/images/<name>.<ext>``,
``ROOT/masks/<name>.<ext>``, ``ROOT/<split>.txt``.
"""

from __future__ import annotations

from condseg.data.check import CheckReport, Problem, check_dataset
from condseg.data.dataset import SegmentationDataset, train_and_val_datasets
from condseg.data.index import find_pair, image_files
from condseg.data.masks import read_mask
from condseg.data.prepare import DATASETS, prepare, prepare_folder
from condseg.data.reading import MAX_PIXELS, read_image
from condseg.data.split_files import read_split, write_split
from condseg.data.synthetic import synthesize
from condseg.data.transforms import geometric_augmentation, strong_photometric
from condseg.errors import DataError

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
    "train_and_val_datasets",
    "write_split",
]
