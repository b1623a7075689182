"""A dataset's classes: ``labels.json`` beside ``train.txt`` names each class and the value
that marks it in the mask files, background first (nnU-Net's ``dataset.json`` ``labels``)::

    {"labels": {"background": 0, "rnfl": 80, "gcipl": 160, "choroid": 255}, "ignore": 254}

A class's id is its position (background 0, then 1..K-1). Grey masks are read by value
(8- or 16-bit), palette PNGs by palette index; ``ignore`` (optional) is a value that marks
pixels of no class (read as :data:`IGNORE_ID`). A value that neither declares is an error
naming the file and the value. A dataset without the file is binary, read by
:func:`~condseg.data.masks.read_mask` as before.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from condseg.data.masks import Level, mask_threshold
from condseg.data.reading import colour_and_alpha, read_values
from condseg.errors import DataError
from condseg.files import read_json, write_text
from condseg.layout import DatasetDir

#: The class id of the ignored pixels; so at most 255 classes (ids 0..254).
IGNORE_ID = 255
_MAX_VALUE = 65535  # the largest value of a 16-bit mask
_TODO = ("write it as {\"labels\": {\"background\": 0, \"NAME\": VALUE, ...}} with an optional "
         "\"ignore\": VALUE (see docs/usage.md, Multi-class), or remove it for a binary dataset")


@dataclass(frozen=True)
class Labels:
    """The declared classes in id order (``names[0]`` is the background), the mask value of
    each, and the value of ignored pixels (None: none)."""

    names: tuple[str, ...]
    values: tuple[int, ...]
    ignore: int | None = None

    @property
    def foreground(self) -> int:
        """How many foreground classes (K - 1)."""
        return len(self.names) - 1

    def describe(self) -> str:
        """``background 0, rnfl 80, ...`` (and the ignore value) for messages."""
        text = ", ".join(f"{n} {v}" for n, v in zip(self.names, self.values, strict=True))
        return text + (f"; ignore {self.ignore}" if self.ignore is not None else "")

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"labels": dict(zip(self.names, self.values, strict=True))}
        if self.ignore is not None:
            data["ignore"] = self.ignore
        return data

    def lookup(self, top: int) -> np.ndarray:
        """Class id of every value 0..``top`` (:data:`IGNORE_ID` for the ignore value), and
        ``-1`` for a value no class declares."""
        table = np.full(max(top, *self.values, self.ignore or 0) + 1, -1, np.int16)
        table[list(self.values)] = np.arange(len(self.values))
        if self.ignore is not None:
            table[self.ignore] = IGNORE_ID
        return table


def _value(item: object, what: str, where: str) -> int:
    if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= _MAX_VALUE:
        raise DataError(f"{where}: {what} is {item!r}, not a mask value (an integer 0..65535); "
                        f"{_TODO}")
    return item


def class_name_problem(name: str) -> str | None:
    """What is wrong with a class name, or None: the one rule of ``labels.json``, ``--labels``
    and a model file's ``classes`` (names are written in CSV headers, options and legends)."""
    if not name.strip() or name != name.strip() or not name.isprintable() or "," in name \
            or "=" in name or "/" in name:
        shown = repr(name) if len(name) <= 40 else repr(name[:40]) + "..."
        return (f"class name {shown} must be non-empty and printable, without surrounding "
                "spaces, ',', '=' or '/'")
    return None


def parse_labels(data: Mapping[str, object], where: str) -> Labels:
    """The one validation of a declaration (from ``labels.json`` or ``--labels``); ``where``
    names its source in the one-line error."""
    unknown = sorted(set(data) - {"labels", "ignore"})
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; {_TODO}")
    labels = data.get("labels")
    if not isinstance(labels, dict) or len(labels) < 2:
        raise DataError(f"{where}: \"labels\" must map the background and at least one class "
                        f"to their mask values; {_TODO}")
    names = tuple(labels)
    if names[0] != "background":
        raise DataError(f"{where}: the first class must be \"background\" (class id 0), not "
                        f"{names[0]!r}; {_TODO}")
    if len(names) > IGNORE_ID:
        raise DataError(f"{where}: {len(names)} classes, more than the {IGNORE_ID} condseg "
                        "can hold; merge classes")
    for name in names:
        if problem := class_name_problem(name):
            raise DataError(f"{where}: {problem}; {_TODO}")
    values = tuple(_value(labels[n], f"the value of {n!r}", where) for n in names)
    ignore = data.get("ignore")
    if ignore is not None:
        ignore = _value(ignore, "\"ignore\"", where)
    doubled = sorted({v for v in [*values, ignore] if [*values, ignore].count(v) > 1} - {None})
    if doubled:
        raise DataError(f"{where}: value(s) {', '.join(map(str, doubled))} declared twice; each "
                        "class (and the ignore value) needs a value of its own")
    return Labels(names, values, ignore)


def parse_labels_option(text: str) -> Labels:
    """``background=0,polyp=255`` (``--labels``) as a declaration."""
    pairs: dict[str, object] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdecimal():
            raise DataError(f"--labels takes name=value pairs, e.g. background=0,rnfl=80,"
                            f"gcipl=160; got {part!r} in {text!r}")
        if name.strip() in pairs:
            raise DataError(f"--labels: class {name.strip()!r} given twice in {text!r}")
        pairs[name.strip()] = int(value)
    return parse_labels({"labels": pairs}, "--labels")


def read_labels(root: str | Path) -> Labels | None:
    """The declaration of the dataset at ``root``; None when it has none (binary)."""
    path = DatasetDir(Path(root)).labels
    if not path.exists():
        return None
    return parse_labels(read_json(path, dict, DataError, _TODO), str(path))


def write_labels(root: str | Path, labels: Labels) -> Path:
    """Write the declaration of the dataset at ``root``."""
    path = DatasetDir(Path(root)).labels
    write_text(path, json.dumps(labels.to_json(), indent=2) + "\n")
    return path


def label_values(path: str | Path, max_pixels: int | None = None) -> tuple[np.ndarray, int]:
    """The values a declaration maps, (H, W), and the format's maximum: a palette mask's
    indices, a grey (or equal-channel colour) mask's values. A colour mask, or one with
    transparency, is refused: which value it means would be a guess."""
    values, full = read_values(path, "mask", max_pixels, indices=True)
    values, alpha = colour_and_alpha(values, full)
    if alpha is not None:
        raise DataError(f"mask {path} has transparency; class masks are read by value: save it "
                        "without alpha (grey or palette PNG)")
    if values.ndim == 3:
        if not (values == values[:, :, :1]).all():
            raise DataError(f"mask {path} is in colour; class masks are read by value: save it "
                            "as a grey or palette (index) PNG")
        values = values[:, :, 0]
    return values, full


def undeclared(values: np.ndarray, labels: Labels) -> dict[int, int]:
    """Each value of ``values`` that no class (nor the ignore value) declares, with its pixels."""
    counts = np.bincount(values.ravel())
    declared = labels.lookup(len(counts) - 1)[: len(counts)] >= 0
    return {int(v): int(counts[v]) for v in np.flatnonzero((counts > 0) & ~declared)}


def undeclared_message(found: dict[int, int], where: str = "the declaration") -> str:
    """One line for :func:`undeclared`'s values (at most 8 shown)."""
    shown = ", ".join(f"{v} ({n} px)" for v, n in list(found.items())[:8])
    more = f", ... ({len(found)} values)" if len(found) > 8 else ""
    return (f"mask values {shown}{more} are declared by no class in {where}: fix the mask or "
            "declare them")


def class_ids(values: np.ndarray, labels: Labels, path: str | Path) -> np.ndarray:
    """Class ids (uint8, :data:`IGNORE_ID` for ignored pixels) of :func:`label_values`' values;
    an undeclared value is an error naming ``path``."""
    found = undeclared(values, labels)
    if found:
        raise DataError(f"mask {path}: {undeclared_message(found)}")
    return labels.lookup(int(values.max())).astype(np.uint8)[values]


def read_class_mask(
    path: str | Path, labels: Labels, max_pixels: int | None = None
) -> np.ndarray:
    """The class ids (H, W, uint8) of a mask file by the declaration ``labels``."""
    return class_ids(label_values(path, max_pixels)[0], labels, path)


def require_binary(root: str | Path) -> Labels | None:
    """The declaration of a dataset a binary model or evaluation can read (none, or one
    foreground class without ignored pixels); one line refusing any other before any work."""
    labels = read_labels(root)
    if labels is not None and labels.foreground > 1:
        raise DataError(
            f"dataset {root} declares {len(labels.names)} classes ({', '.join(labels.names)} "
            f"in {DatasetDir(Path(root)).labels.name}), but a binary model or evaluation reads "
            "it here: use a model trained on these classes (its evaluations name them)")
    if labels is not None and labels.ignore is not None:
        raise DataError(
            f"dataset {root} declares ignored pixels (value {labels.ignore} in "
            f"{DatasetDir(Path(root)).labels.name}), but a binary model or evaluation reads it "
            "here: a binary task cannot leave pixels out; remove \"ignore\" and mark them "
            "background")
    return labels


def binary_disagreement(labels: Labels, full: int) -> str | None:
    """Why the binary readers (foreground from half of the format's range) would misread a
    mask of maximum ``full`` that a declaration of one foreground class describes; None when
    they read it as declared."""
    threshold = mask_threshold(full)
    (background, fg), name = labels.values, labels.names[1]
    if background < threshold <= fg:
        return None
    return (f"{DatasetDir(Path()).labels.name} declares background {background} and {name} "
            f"{fg}, but binary masks are foreground from {threshold} of {full} up: save "
            f"{name} as {full} and background as 0 (and declare those)")


def mask_classes(
    values: np.ndarray, full: int, labels: Labels
) -> tuple[np.ndarray, list[tuple[Level, str]]]:
    """Pixels of each class in one mask (by id) and its problems as (level, message): values
    no class declares, and a binary declaration the binary readers would misread."""
    counts = np.bincount(values.ravel(), minlength=max(labels.values) + 1)
    problems: list[tuple[Level, str]] = []
    found = undeclared(values, labels)
    if found:
        problems.append(("error", undeclared_message(found, DatasetDir(Path()).labels.name)))
    if labels.foreground == 1 and (why := binary_disagreement(labels, full)):
        problems.append(("error", why))
    return counts[list(labels.values)], problems


def require_supported(root: str | Path) -> Labels | None:
    """The declaration of a dataset training can take: binary, or several foreground classes;
    ignored pixels only with several (the binary path has no pixels to leave out). One line
    refusing one foreground class with ignored pixels before any work."""
    labels = read_labels(root)
    if labels is not None and labels.foreground == 1 and labels.ignore is not None:
        raise DataError(
            f"dataset {root} declares one class and ignored pixels (value {labels.ignore} in "
            f"{DatasetDir(Path(root)).labels.name}); a binary dataset cannot leave pixels out: "
            "remove \"ignore\" and mark them background, or declare a second class")
    return labels
