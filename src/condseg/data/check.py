"""Dataset verification before training: every problem is reported per file, in one table, with
what to do about it. Training refuses to start on errors unless told to skip ``bad_names()``."""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from condseg.data.index import FolderIndex
from condseg.data.labels import Labels, label_values, mask_classes, read_labels, require_binary
from condseg.data.masks import Level, mask_problems, read_mask_values
from condseg.data.names import shown, unlistable
from condseg.data.prepare import DATASETS
from condseg.data.reading import read_image
from condseg.data.split_files import read_split
from condseg.errors import DataError
from condseg.layout import DatasetDir

_LEVEL_ORDER = {"error": 0, "warning": 1, "info": 2}
_LEVEL_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}

DEFAULT_SPLITS = ("train", "val")
OPTIONAL_SPLITS = ("test",)


@dataclass(frozen=True)
class Problem:
    """One problem with one file (or one split / the dataset when ``file`` is None)."""

    level: Level
    message: str
    split: str | None = None
    name: str | None = None
    file: str | None = None


@dataclass
class CheckReport:
    """Outcome of :func:`check_dataset`; ``ok`` means no errors (warnings do not block)."""

    root: Path
    split_sizes: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    labels: Labels | None = None  # the dataset's declared classes (None: binary)
    # per split, per class id: (pixels, images holding the class); with ``labels`` only
    classes: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def _at(self, level: Level) -> list[Problem]:
        return [p for p in self.problems if p.level == level]

    @property
    def errors(self) -> list[Problem]:
        return self._at("error")

    @property
    def warnings(self) -> list[Problem]:
        return self._at("warning")

    @property
    def infos(self) -> list[Problem]:
        return self._at("info")

    @property
    def ok(self) -> bool:
        return not self.errors

    def bad_names(self, include_warnings: bool = False) -> list[str]:
        """Names with an error (and warning, if asked), for ``SegmentationDataset(exclude=...)``."""
        levels = ("error", "warning") if include_warnings else ("error",)
        return sorted({p.name for p in self.problems if p.level in levels and p.name is not None})

    def table(self) -> Table:
        """The problems, errors first, one line each."""
        table = Table(title=f"Dataset check: {self.root}", show_lines=False)
        for column in ("level", "split", "name", "file", "problem and what to do"):
            table.add_column(column, overflow="fold")
        ordered = sorted(
            self.problems,
            key=lambda p: (_LEVEL_ORDER[p.level], p.split or "", p.name or "", p.file or ""),
        )
        for p in ordered:  # Text, not markup: a name like "scan[1]" or "[b]x" prints as it is
            table.add_row(
                Text(p.level, style=_LEVEL_STYLE[p.level]),
                *(Text(shown(v or "")) for v in (p.split, p.name, p.file, p.message)),
            )
        return table

    def class_table(self) -> Table:
        """Pixels and images of each declared class per split."""
        assert self.labels is not None
        table = Table(title="Classes (labels.json): pixels / images per split")
        for column in ("id", "class", "value", *self.classes):
            table.add_column(column, overflow="fold")
        for i, (name, value) in enumerate(zip(self.labels.names, self.labels.values,
                                              strict=True)):
            counts = [f"{c[i][0]:,} / {c[i][1]}" for c in self.classes.values()]
            table.add_row(str(i), Text(shown(name)), str(value), *counts)
        return table

    def summary(self) -> str:
        sizes = ", ".join(f"{s} ({n})" for s, n in self.split_sizes.items()) or "none"
        return (
            f"Checked splits {sizes} in {self.seconds:.1f} s: {len(self.errors)} errors, "
            f"{len(self.warnings)} warnings, {len(self.infos)} notes."
        )

    def print(self, console: Console | None = None) -> None:
        console = console or Console()
        if self.problems:
            console.print(self.table())
        if self.labels is not None:
            console.print(self.class_table())
        console.print(Text(self.summary()))
        if self.errors:
            console.print(
                f"[bold red]Training refuses to start on errors[/]: fix them, or skip the "
                f"{len(self.bad_names())} names with errors explicitly."
            )


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _split_file(split: str) -> str:
    """A split's file as the report names it: relative to the dataset folder."""
    return DatasetDir(Path()).split(split).as_posix()


def _check_pair(
    index: FolderIndex, name: str, max_pixels: int | None, labels: Labels | None
) -> tuple[list[tuple[Level, str, str | None]], np.ndarray | None]:
    """Problems of one name: (level, message, file); and with ``labels``, the pixels of each
    class in its mask (None when it cannot be read)."""
    found: list[tuple[Level, str, str | None]] = []
    pixels = None
    shapes: dict[str, tuple[int, int]] = {}
    for kind, folder in index.folders.items():
        try:
            path = index.find(kind, name)
        except DataError as exc:
            found.append(("error", f"{exc}; add it or remove the name from the split",
                          f"{_relative(folder, index.root)}/{name}.*"))
            continue
        file = _relative(path, index.root)
        try:
            if kind == "image":
                shapes[kind] = read_image(path, max_pixels).shape[:2]
            elif labels is None:
                values, full = read_mask_values(path, max_pixels)
                shapes[kind] = values.shape
                found.extend((level, msg, file) for level, msg in mask_problems(values, full))
            else:
                values, full = label_values(path, max_pixels)
                shapes[kind] = values.shape
                pixels, said = mask_classes(values, full, labels)
                found.extend((level, msg, file) for level, msg in said)
        except DataError as exc:
            found.append(("error", f"{exc}", file))
    if len(shapes) == 2 and shapes["image"] != shapes["mask"]:
        (ih, iw), (mh, mw) = shapes["image"], shapes["mask"]
        hint = " (transposed: EXIF orientation on one of them?)" if (ih, iw) == (mw, mh) else ""
        found.append(
            (
                "error",
                f"image is {ih}x{iw} but mask is {mh}x{mw} (HxW){hint}; "
                "fix the pair or leave it out",
                _relative(index.find("mask", name), index.root),
            )
        )
    return found, pixels


def _unlistable_and_orphans(index: FolderIndex, listed: set[str]) -> list[Problem]:
    """A warning per image whose name no split file can list, and per mask without an image
    (its name in no checked split: a listed one is already an error); a note per folder on the
    entries that are not image files."""
    found = []
    for kind, skipped in index.skipped.items():
        if skipped:
            names = [path.name for path, _ in skipped]
            examples = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            found.append(Problem("info", "entries that are not image files (hidden, subfolders, "
                                 f"other types), not used: {len(names)} ({examples})",
                                 file=f"{_relative(index.folders[kind], index.root)}/"))
    for name, paths in sorted(index.files["image"].items()):
        why = unlistable(name)
        found += [Problem("warning", f"{why}, so no split can use this image; rename the file",
                          file=_relative(path, index.root)) for path in paths if why]
    orphans = sorted(index.files["mask"].keys() - index.files["image"].keys() - listed)
    images = _relative(index.folders["image"], index.root)
    for name in orphans:
        found += [Problem("warning", f"mask without an image (no {images}/{name}.* file): add "
                          "the image or remove the mask", file=_relative(path, index.root))
                  for path in index.files["mask"][name]]
    return found


def require_prepared(root: Path, splits: list[str]) -> None:
    """Refuse, in one line that leads to ``data prepare``, a dataset folder that does not
    exist or lists none of ``splits`` (a raw release: images and masks, no split files); a
    prepared one missing some split files gets a line per file in the report instead."""
    prepare = (f"prepare it with `condseg data prepare DATASET RAW OUT` (a public release: "
               f"{', '.join(DATASETS)}) or `condseg data prepare folder IMAGES MASKS OUT` "
               "(your own images and masks)")
    if not root.exists():
        raise DataError(f"dataset folder {root} not found; {prepare}")
    if not root.is_dir():
        raise DataError(f"dataset folder {root} is a file, not a folder; {prepare}")
    if splits and not any(DatasetDir(root).has_split(split) for split in splits):
        listed = ", ".join(map(_split_file, splits))
        raise DataError(f"{root} is not a prepared dataset (no {listed}; a raw release?); "
                        f"{prepare}")


def check_dataset(
    root: str | Path,
    splits: list[str] | tuple[str, ...] | None = None,
    workers: int | None = None,
    max_pixels: int | None = None,
    *,
    binary: bool = False,
) -> CheckReport:
    """Verify a canonical dataset folder.

    ``splits`` None (or empty) checks train and val (both required) and test when present.
    Decoding runs in a thread pool (Pillow releases the GIL while decoding); ``workers`` defaults
    to the CPU count. ``max_pixels`` is the readers' pixel limit (None: the default
    :data:`condseg.data.reading.MAX_PIXELS`). A dataset that declares its classes
    (:mod:`condseg.data.labels`) is checked by the declaration, with the pixels and images of
    each class per split; ``binary`` (the caller reads masks as binary: training, evaluation)
    refuses one of several foreground classes in one line before any file is read.
    """
    start = time.perf_counter()
    root = Path(root)
    problems: list[Problem] = []
    if not splits:  # None, or an empty list from a CLI option that was not given
        wanted = [*DEFAULT_SPLITS, *(s for s in OPTIONAL_SPLITS if DatasetDir(root).has_split(s))]
    else:
        wanted = list(splits)
    require_prepared(root, wanted)
    labels = require_binary(root) if binary else read_labels(root)
    names_of: dict[str, list[str]] = {}
    for split in wanted:
        try:
            names_of[split] = read_split(root, split)
        except DataError as exc:
            problems.append(Problem("error", str(exc), split=split, file=_split_file(split)))
            continue
        if not names_of[split]:
            problems.append(
                Problem("error", f"{_split_file(split)} lists no names", split, None,
                        _split_file(split))
            )
        for name, count in Counter(names_of[split]).items():
            if count > 1:
                problems.append(
                    Problem(
                        "warning",
                        f"listed {count} times in {_split_file(split)}: remove the duplicates",
                        split,
                        name,
                        _split_file(split),
                    )
                )
    splits_of: dict[str, list[str]] = {}
    for split, names in names_of.items():
        for name in dict.fromkeys(names):
            splits_of.setdefault(name, []).append(split)
    for name, in_splits in splits_of.items():
        if len(in_splits) > 1:
            files = " and ".join(map(_split_file, in_splits))
            problems.append(
                Problem(
                    "error",
                    f"listed in {files}: remove it from all but one split",
                    ", ".join(in_splits),
                    name,
                    None,
                )
            )
    try:
        index = FolderIndex(root)
    except DataError as exc:
        problems.append(Problem("error", str(exc)))
        return CheckReport(root, {s: len(n) for s, n in names_of.items()}, problems,
                           time.perf_counter() - start, labels)
    names = list(splits_of)
    per_split = {s: np.zeros((len(labels.names), 2), np.int64) for s in names_of} if labels else {}
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for name, (found, pixels) in zip(
            names, pool.map(lambda n: _check_pair(index, n, max_pixels, labels), names),
            strict=True,
        ):
            split = ", ".join(splits_of[name])
            problems.extend(Problem(level, msg, split, name, file) for level, msg, file in found)
            for s in splits_of[name] if pixels is not None else ():
                per_split[s] += np.stack([pixels, pixels > 0], axis=1)
    problems.extend(_absent_classes(labels, per_split) if labels else [])
    problems.extend(_unlistable_and_orphans(index, set(splits_of)))
    unlisted = sorted(n for n in set(index.files["image"]) - set(splits_of) if not unlistable(n))
    if unlisted and names_of:
        examples = ", ".join(unlisted[:5]) + (", ..." if len(unlisted) > 5 else "")
        problems.append(
            Problem(
                "info",
                f"{len(unlisted)} images are in no checked split ({examples}); they are not used",
                file=f"{_relative(index.folders['image'], root)}/",
            )
        )
    classes = {s: [(int(p), int(i)) for p, i in counts] for s, counts in per_split.items()}
    return CheckReport(root, {s: len(n) for s, n in names_of.items()}, problems,
                       time.perf_counter() - start, labels, classes)


def _absent_classes(labels: Labels, per_split: dict[str, np.ndarray]) -> list[Problem]:
    """A warning per foreground class that no image of a split holds."""
    return [Problem("warning", f"class {labels.names[i]!r} (value {labels.values[i]}) is in no "
                    f"image of split {split!r}: it is neither learnt nor measured there; add "
                    "images that show it", split=split, file=_split_file(split))
            for split, counts in per_split.items()
            for i in range(1, len(labels.names)) if counts[i, 1] == 0]
