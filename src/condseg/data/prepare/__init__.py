"""Converters into the canonical layout: the public releases with the papers' splits
(:mod:`~condseg.data.prepare.releases`), and any folder of images and masks
(:mod:`~condseg.data.prepare.folder`) with a seeded split or k folds
(:mod:`~condseg.data.prepare.stratify`).

Each source is described by a :class:`~condseg.data.prepare.spec.DatasetSpec`, and one
pipeline (:mod:`~condseg.data.prepare.pipeline`) converts them all: find the files and refuse
folders that look swapped (:mod:`~condseg.data.prepare.find`), pair them and check each pair
(:mod:`~condseg.data.prepare.pair`), assign the split, write everything into a staged folder
renamed to OUT at the end. RAW is only read.
"""

from __future__ import annotations

from condseg.data.prepare.folder import MASK_SUFFIXES, folder_spec, prepare_folder
from condseg.data.prepare.releases import (
    DATASETS,
    IMAGE_DIRS,
    MASK_DIRS,
    N_FOLDS,
    packaged_split,
    prepare,
)
from condseg.data.prepare.spec import DatasetSpec, Sample

__all__ = [
    "DATASETS",
    "IMAGE_DIRS",
    "MASK_DIRS",
    "MASK_SUFFIXES",
    "N_FOLDS",
    "DatasetSpec",
    "Sample",
    "folder_spec",
    "packaged_split",
    "prepare",
    "prepare_folder",
]
