"""What a source of images and masks is: a :class:`DatasetSpec` says which files are images
and masks (regular expressions on the file name, and optionally on the name of the folder
holding it, case-insensitive), where the split comes from, how masks become binary and, for a
dataset of classes, its declaration; a :class:`Sample` is one image with its mask file(s) as
found."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from condseg.data.labels import Labels
from condseg.data.masks import mask_threshold
from condseg.data.names import IMAGE_EXTENSIONS

SplitSource = Literal["packaged", "release", "seeded", "folds", "folder"]

#: Any image file name ending, as a regular expression.
ANY_IMAGE = rf"\.(?:{'|'.join(e[1:] for e in IMAGE_EXTENSIONS)})"


@dataclass(frozen=True)
class Sample:
    """One image with its mask file(s), its split if the release says so, and (``prepare
    folder`` only, which stratifies by it) whether its mask has foreground."""

    name: str
    image: Path
    masks: tuple[Path, ...]
    split: str | None = None
    foreground: bool | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """How to read one source (see the module docstring)."""

    title: str
    image_re: str  # file name with a (?P<name>...) group
    mask_re: str  # file name with a (?P<name>...) group (and an optional (?P<suffix>...))
    sizes: dict[str, int]
    split_source: SplitSource
    split_of: Callable[[Path], str | None] | None = None
    # "copy": masks are usable as they are; "labels": instance label maps, foreground = value > 0;
    # "union": several binary masks per image, merged.
    masks: Literal["copy", "labels", "union"] = "copy"
    image_dir: str | None = None  # name of the folder holding the images (None: any folder)
    mask_dir: str | None = None
    # The classes the dataset declares (labels.json). With "copy" the masks are class masks
    # read by it; with ``class_of`` the (merged) binary masks are written as the class id
    # ``class_of`` gives a sample's name (0: all background).
    labels: Labels | None = None
    class_of: Callable[[str], int] | None = None

    def foreground(self, values: np.ndarray, full: int) -> np.ndarray:
        """Instance label maps: any label; binary masks: at least half of the format's range."""
        return values > 0 if self.masks == "labels" else values >= mask_threshold(full)

    @property
    def source_labels(self) -> Labels | None:
        """The declaration the source's masks are read by (None: they are binary masks)."""
        return self.labels if self.class_of is None else None

    def swapped(self) -> DatasetSpec:
        """The same source with the roles of images and masks exchanged (``--swap``)."""
        return replace(self, image_re=self.mask_re, mask_re=self.image_re,
                       image_dir=self.mask_dir, mask_dir=self.image_dir)


def examples(items: Sequence[str], limit: int = 8) -> str:
    """The first ``limit`` of ``items`` for a message, and how many there are in all."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in total)" if len(items) > limit else "")
