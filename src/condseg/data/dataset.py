"""The canonical folder dataset for torch: the image/mask pairs of one split, resized,
augmented and normalised; and the training and validation sets a run's data section describes.

Layout (:class:`condseg.layout.DatasetDir`): ``ROOT/images/<name>.<ext>``,
``ROOT/masks/<name>.<ext>`` and split files ``ROOT/<split>.txt``. Reading files:
:mod:`condseg.data.reading` and :mod:`condseg.data.masks`; names to files:
:mod:`condseg.data.index`; split files: :mod:`condseg.data.split_files`. Their names that callers
import from here (and the docs name here) stay importable from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from condseg.data.index import FolderIndex, find_pair, image_files
from condseg.data.labels import read_class_mask, read_labels
from condseg.data.masks import read_mask
from condseg.data.reading import MAX_PIXELS, image_size, read_image
from condseg.data.split_files import read_split, write_split
from condseg.data.transforms import (
    VIEWS,
    geometric_augmentation,
    resize_image,
    resize_labels,
    resize_mask,
    to_tensor,
)
from condseg.errors import DataError

if TYPE_CHECKING:
    from condseg.config import Augmentation, DataConfig

__all__ = [
    "MAX_PIXELS",
    "DataError",
    "SegmentationDataset",
    "find_pair",
    "image_files",
    "image_size",
    "read_image",
    "read_mask",
    "read_split",
    "train_and_val_datasets",
    "write_split",
]


Transform = Callable[..., dict[str, Any]]


class SegmentationDataset(Dataset):
    """Image/mask pairs of one split, resized to ``size``x``size`` and normalised.

    The pair is resized first and augmented at the target size (far cheaper than augmenting
    1920x1072 frames). Each of ``views`` adds an extra named view of the same geometrically
    augmented image (ConDSeg's stage-1 strong photometric view), drawn per sample; the mask is
    shared. ``mean``/``std`` are the model's (None: scale to [0, 1] only, as the authors' code).
    ``max_pixels`` is the readers' pixel limit (None: :data:`MAX_PIXELS`).

    The mask is float32 (1, H, W) 0/1 for a binary dataset; for one whose ``labels.json``
    declares several foreground classes it is int64 (1, H, W) class ids
    (:data:`~condseg.data.labels.IGNORE_ID` for ignored pixels), resized and augmented by
    nearest neighbour so that no id is interpolated into another.
    """

    def __init__(
        self,
        root: str | Path,
        split_or_names: str | Sequence[str],
        size: int = 256,
        augment: Transform | None = None,
        views: Mapping[str, Transform] | None = None,
        *,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        exclude: Iterable[str] = (),
        max_pixels: int | None = None,
    ) -> None:
        self.root = Path(root)
        names = (
            read_split(self.root, split_or_names)
            if isinstance(split_or_names, str)
            else list(split_or_names)
        )
        skip = set(exclude)
        self.names = [n for n in names if n not in skip]
        self.excluded = [n for n in names if n in skip]
        if not self.names:
            raise DataError(f"no names to load from {self.root} ({split_or_names!r})")
        index = FolderIndex(self.root)
        self.pairs = [index.pair(n) for n in self.names]
        self.size = size
        self.augment = augment
        self.views = dict(views or {})
        reserved = {"image", "mask", "name"} & set(self.views)
        if reserved:
            raise DataError(f"view names {sorted(reserved)} are reserved; rename the view")
        self.mean, self.std = mean, std
        self.max_pixels = max_pixels
        labels = read_labels(self.root)
        # Several foreground classes: class-id masks. None: binary, read as before.
        self.labels = labels if labels is not None and labels.foreground > 1 else None
        self._sizes: dict[int, tuple[int, int]] = {}
        self._seeded_for: object = None

    def __len__(self) -> int:
        return len(self.names)

    def original_size(self, i: int) -> tuple[int, int]:
        """(H, W) of image ``i`` before resizing, read from its header."""
        if i not in self._sizes:
            self._sizes[i] = image_size(self.pairs[i][0], self.max_pixels)
        return self._sizes[i]

    def _reseed(self) -> None:
        """Give each DataLoader worker its own augmentation stream.

        Albumentations keeps its random state inside each Compose; forked workers would all
        inherit the same state and repeat each other's augmentations. Unseeded transforms are
        seeded from torch's per-process seed, which also makes runs reproducible under
        ``torch.manual_seed`` / Lightning's ``seed_everything``.
        """
        info = get_worker_info()
        key = (info.id, info.seed) if info is not None else "main"
        if key == self._seeded_for:
            return
        self._seeded_for = key
        base = info.seed if info is not None else torch.initial_seed()
        transforms = (self.augment, *self.views.values())
        seeds = np.random.SeedSequence(base % 2**63).generate_state(max(2, len(transforms)))
        for transform, seed in zip(transforms, seeds, strict=False):
            if transform is not None and getattr(transform, "seed", 0) is None:
                transform.set_random_seed(int(seed))

    def __getitem__(self, i: int) -> dict[str, Any]:
        self._reseed()
        image_path, mask_path = self.pairs[i]
        image = read_image(image_path, self.max_pixels)
        labels = self.labels
        mask = (read_mask(mask_path, self.max_pixels) if labels is None
                else read_class_mask(mask_path, labels, self.max_pixels))
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"image {image_path} is {image.shape[0]}x{image.shape[1]} but mask {mask_path} "
                f"is {mask.shape[0]}x{mask.shape[1]} (HxW); fix the pair or leave it out"
            )
        resize = resize_mask if labels is None else resize_labels
        image, target = resize_image(image, self.size), resize(mask, self.size)
        if self.augment is not None:
            out = self.augment(image=image, mask=target)
            image, target = out["image"], out["mask"]
        item = {
            "image": to_tensor(image, self.mean, self.std),
            "mask": torch.from_numpy(np.ascontiguousarray(
                target, dtype=np.float32 if labels is None else np.int64)[None]),
            "name": self.names[i],
        }
        for key, view in self.views.items():
            item[key] = to_tensor(view(image=image)["image"], self.mean, self.std)
        return item


def train_and_val_datasets(
    data: DataConfig,
    augmentation: Augmentation,
    views: Sequence[str],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The training set of a stage (its geometric ``augmentation`` and extra ``views``) and the
    validation set, of the splits ``data`` names, normalised with ``mean``/``std`` (the run's
    ``data.mean``/``data.std`` or its encoder's)."""
    common = {"size": data.size, "mean": mean, "std": std, "exclude": data.skip,
              "max_pixels": data.max_pixels}
    aug = augmentation
    train = SegmentationDataset(
        data.root, data.train_split,
        augment=geometric_augmentation(aug.rotate, aug.p_rotate, aug.p_flip, p_vflip=aug.p_vflip,
                                       scale=aug.scale, shear=aug.shear, shift=aug.shift),
        views={view: VIEWS.get(view)() for view in views}, **common,
    )
    return train, SegmentationDataset(data.root, data.val_split, **common)
