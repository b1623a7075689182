"""Converters into the canonical layout: the public releases with the papers' splits, and any
folder of images and masks (``prepare_folder``) with a seeded split or k folds.

Each source is described by a :class:`DatasetSpec`: which files are images and masks (regular
expressions on the file name, and optionally on the name of the folder holding it,
case-insensitive, searched anywhere under RAW so the nesting of a download does not matter),
where its split comes from, and how masks become binary. One pipeline converts them all:

1. find the files (:func:`_find`) and refuse folders that look swapped (:func:`_check_swapped`);
2. pair them by name and check each pair from the file headers (:func:`_pair`): what does not
   pair, does not open, has a name a split file cannot list or a mask of another size than its
   image is left out and listed in ``OUT/not_converted.tsv`` with the reason, never silently
   dropped and never a reason to refuse the rest (``prepare folder`` lists there every other
   entry of its folders too);
3. assign the split, recorded in ``OUT/split_info.json``;
4. write everything into a temporary sibling folder renamed to OUT at the end
   (:func:`condseg.outputs.staged`), so a failure or an interruption leaves no half-written
   OUT behind, and a second process writing the same OUT is refused.

RAW is only read.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from condseg.data.masks import mask_problems, mask_threshold, read_mask_values
from condseg.data.names import IMAGE_EXTENSIONS, name_key, skip_reason, unlistable
from condseg.data.reading import DataError, colour_and_alpha, image_size, read_values
from condseg.data.splits import split_names, write_split
from condseg.outputs import check_staged, staged

SplitSource = Literal["packaged", "release", "seeded", "folds", "folder"]

#: Folder names (case-insensitive) recognised as holding a release's images and its masks.
IMAGE_DIRS = r"images?|imgs?|originals?|frames?|inputs?"
MASK_DIRS = r"masks?|ground ?truths?|gts?|labels?|annotations?|segmentations?"
#: Mask name suffixes recognised by ``prepare folder`` (after ``_`` or ``-``, any case).
MASK_SUFFIXES = ("mask", "segmentation", "seg", "gt", "label", "labels")
_ANY_IMAGE = rf"\.(?:{'|'.join(e[1:] for e in IMAGE_EXTENSIONS)})"
NOT_CONVERTED = "not_converted.tsv"
SWAP_SAMPLE = 8  # files of each kind looked at to tell whether images and masks are swapped


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

    def swapped(self) -> DatasetSpec:
        """The same source with the roles of images and masks exchanged (``--swap``)."""
        return replace(self, image_re=self.mask_re, mask_re=self.image_re,
                       image_dir=self.mask_dir, mask_dir=self.image_dir)


def _keyword_split(keywords: dict[str, str]) -> Callable[[Path], str | None]:
    """Split from the innermost file or folder name containing one of ``keywords`` (innermost,
    so a download folder called e.g. ``isic_test`` above the release does not decide)."""

    def split_of(path: Path) -> str | None:
        for part in reversed(path.parts):
            for keyword, split in keywords.items():
                if keyword in part.lower():
                    return split
        return None

    return split_of


_ISIC_IMAGE = r"(?P<name>isic_\d+)\.jpg"
_ISIC_MASK = r"(?P<name>isic_\d+)_segmentation\.png"

DATASETS: dict[str, DatasetSpec] = {
    "kvasir-seg": DatasetSpec(
        "Kvasir-SEG: images/*.jpg + masks/*.jpg; official 880/120 lists (packaged)",
        rf"(?P<name>.+){_ANY_IMAGE}",
        rf"(?P<name>.+){_ANY_IMAGE}",
        {"train": 880, "val": 120},
        "packaged",
        image_dir=IMAGE_DIRS,
        mask_dir=MASK_DIRS,
    ),
    "kvasir-sessile": DatasetSpec(
        "Kvasir-Sessile (or Kvasir-SEG): images/*.jpg + masks/*.jpg; packaged 156/20/20 lists "
        "(a seeded split of the paper's sizes: the paper published no lists)",
        rf"(?P<name>.+){_ANY_IMAGE}",
        rf"(?P<name>.+){_ANY_IMAGE}",
        {"train": 156, "val": 20, "test": 20},
        "packaged",
        image_dir=IMAGE_DIRS,
        mask_dir=MASK_DIRS,
    ),
    "glas": DatasetSpec(
        "GlaS: train_*.bmp (train), testA_*/testB_*.bmp (val), *_anno.bmp instance masks",
        r"(?P<name>(train|testa|testb)_\d+)\.bmp",
        r"(?P<name>(train|testa|testb)_\d+)_anno\.bmp",
        {"train": 85, "val": 80},
        "release",
        _keyword_split({"train": "train", "test": "val"}),
        masks="labels",
    ),
    "isic2016": DatasetSpec(
        "ISIC-2016: ISIC_*.jpg + ISIC_*_Segmentation.png; Training (train) / Test (val) folders",
        _ISIC_IMAGE,
        _ISIC_MASK,
        {"train": 900, "val": 379},
        "release",
        _keyword_split({"training": "train", "test": "val"}),
    ),
    "isic2017": DatasetSpec(
        "ISIC-2017: ISIC_*.jpg + ISIC_*_segmentation.png; Training/Validation/Test folders",
        _ISIC_IMAGE,
        _ISIC_MASK,
        {"train": 2000, "val": 150, "test": 600},
        "release",
        _keyword_split({"training": "train", "validation": "val", "test": "test"}),
    ),
    "cvc-clinicdb": DatasetSpec(
        "CVC-ClinicDB: Original/*.tif + Ground Truth/*.tif (or images/ + masks/); seeded "
        "550/62 split (as PraNet)",
        rf"(?P<name>\d+){_ANY_IMAGE}",
        rf"(?P<name>\d+){_ANY_IMAGE}",
        {"train": 550, "val": 62},
        "seeded",
        image_dir=IMAGE_DIRS,
        mask_dir=MASK_DIRS,
    ),
    "busi": DatasetSpec(
        "BUSI: '<class> (n).png' + '<class> (n)_mask[_k].png' (merged); seeded 4 folds, "
        "train/val = fold 0",
        r"(?P<name>(benign|malignant|normal) \(\d+\))\.png",
        r"(?P<name>(benign|malignant|normal) \(\d+\))_mask(_\d+)?\.png",
        {"train": 585, "val": 195},
        "folds",
        masks="union",
    ),
}
N_FOLDS = 4


def folder_spec(same_folder: bool) -> DatasetSpec:
    """``prepare folder``: any image file; a mask pairs with the image of its stem, or of its
    stem without one of :data:`MASK_SUFFIXES` (required when images and masks share a folder)."""
    optional = "" if same_folder else "?"
    suffix = rf"(?P<suffix>[_-](?:{'|'.join(MASK_SUFFIXES)})){optional}"
    return DatasetSpec(
        "a folder of images and a folder of masks paired by name",
        rf"(?P<name>.+){_ANY_IMAGE}",
        rf"(?P<name>.+?){suffix}{_ANY_IMAGE}",
        {},
        "folder",
    )


def _examples(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in total)" if len(items) > limit else "")


def _walk(root: Path) -> Iterator[Path]:
    """Every entry under ``root`` that is not a folder, sorted, and every hidden folder (not
    searched: ``.ipynb_checkpoints`` holds copies); folder links are followed, each real folder
    once (a looping link ends there); file links that loop or dangle are kept, so that reading
    them reports them."""

    def refuse(error: OSError) -> None:
        raise DataError(f"cannot list {error.filename}: {error.strerror}")

    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True, onerror=refuse):
        real = os.path.realpath(folder)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        hidden = sorted(d for d in dirs if d.startswith("."))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(folder) / f for f in sorted([*files, *hidden]))


Found = dict[str, dict[str, list[Path]]]  # "image" / "mask" -> name -> files


def _find(
    spec: DatasetSpec, raw: Path, roots: Mapping[str, Path] | None
) -> tuple[Found, Counter, list[tuple[Path, str]]]:
    """Image and mask files by name, how often each mask suffix was seen, and every other
    entry with why it was not taken (hidden entries are never taken).

    ``roots`` None searches RAW, a file's kind decided by its name and its folder's name;
    otherwise ``roots["image"]`` holds the images and ``roots["mask"]`` the masks (they may be
    the same folder). A file that could be either is a mask.
    """
    kinds = ("mask", "image")
    patterns = {
        "image": (re.compile(spec.image_re, re.I | re.S), spec.image_dir),
        "mask": (re.compile(spec.mask_re, re.I | re.S), spec.mask_dir),
    }
    if roots is None:
        walks = [(raw, kinds)]
    else:
        folders = dict.fromkeys(roots.values())
        walks = [(f, tuple(k for k in kinds if roots[k] == f)) for f in folders]
    found: Found = {"image": {}, "mask": {}}
    suffixes: Counter = Counter()
    others: list[tuple[Path, str]] = []
    for root, allowed in walks:
        for path in _walk(root):
            hidden = path.name.startswith(".")
            for kind in () if hidden else allowed:
                regex, folder = patterns[kind]
                match = regex.fullmatch(path.name)
                if not match or (
                    roots is None
                    and folder is not None
                    and not re.fullmatch(folder, path.parent.name, re.I)
                ):
                    continue
                found[kind].setdefault(name_key(match["name"]), []).append(path)
                if kind == "mask":
                    suffixes[(match.groupdict().get("suffix") or "").lower()] += 1
                break
            else:
                others.append((path, skip_reason(path)))
    return found, suffixes, others


def _looks_like_mask(path: Path) -> bool | None:
    """One channel (or equal channels) and at most two values; None if unreadable."""
    try:
        values, _ = colour_and_alpha(*read_values(path))
    except DataError:
        return None
    if values.ndim == 3 and not (values == values[:, :, :1]).all():
        return False
    return len(np.unique(values)) <= 2


def _mostly_masks(files: list[Path]) -> bool:
    """Do most of (up to SWAP_SAMPLE evenly spaced) ``files`` look like masks?"""
    sample = files[:: max(1, len(files) // SWAP_SAMPLE)][:SWAP_SAMPLE]
    looks = [v for v in map(_looks_like_mask, sample) if v is not None]
    return bool(looks) and sum(looks) > len(looks) / 2


def _check_swapped(found: Found, swap: bool) -> None:
    """Refuse when the "images" look like masks and the "masks" do not (swapped folders)."""
    images, masks = (sorted(p for ps in found[k].values() for p in ps) for k in ("image", "mask"))
    if images and masks and _mostly_masks(images) and not _mostly_masks(masks):
        where = _examples(sorted({str(p.parent) for p in images}), limit=2)
        todo = "drop --swap" if swap else "pass --swap to exchange them"
        raise DataError(
            f"the images ({where}) look like masks (one channel, two values) and the masks "
            f"like images: are images and masks swapped? {todo}"
        )


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return path


def _validate(
    sample: Sample, spec: DatasetSpec, decode: bool, max_pixels: int | None
) -> Sample | str:
    """The sample, or why it cannot be converted: its files do not open, or a mask has another
    size than its image (never resized: which pixels it annotates would be a guess). With
    ``decode`` the masks are decoded (their foreground recorded; a mask that ``data check``
    would refuse, such as a 0/1 label map, is refused unless the spec's masks are label maps);
    otherwise only the headers are read."""
    try:
        height, width = image_size(sample.image, max_pixels)
        foreground = False
        for mask in sample.masks:
            if decode:
                values, full = read_mask_values(mask, max_pixels)
                errors = [m for level, m in mask_problems(values, full) if level == "error"]
                if errors and spec.masks != "labels":
                    return f"mask {mask}: {errors[0]}"
                shape = values.shape
                foreground = foreground or bool(_foreground(values, full, spec).any())
            else:
                shape = image_size(mask, max_pixels)
            if shape != (height, width):
                return (
                    f"mask {mask} is {shape[0]}x{shape[1]} but image {sample.image} is "
                    f"{height}x{width} (HxW); masks are not resized: fix or delete the mask"
                )
    except DataError as exc:
        return str(exc)
    return replace(sample, foreground=foreground if decode else None)


def _pair(
    spec: DatasetSpec, raw: Path, found: Found, decode: bool, max_pixels: int | None
) -> tuple[list[Sample], list[tuple[Path, str]]]:
    """Samples that can be converted, and every other found file with the reason."""
    images, masks = found["image"], found["mask"]
    skipped: list[tuple[Path, str]] = []
    candidates = []
    for name in sorted(images.keys() | masks.keys()):
        ims, mks = images.get(name, []), masks.get(name, [])
        why = unlistable(name)
        if why is not None:
            skipped += [(p, f"{why}; rename the file") for p in ims + mks]
        elif not ims or not mks:
            kind, other = ("mask", "image") if not ims else ("image", "mask")
            skipped += [(p, f"no {other} for this {kind} (name {name!r})") for p in ims + mks]
        elif len(ims) > 1 or (len(mks) > 1 and spec.masks != "union"):
            files = ", ".join(map(str, ims + mks))
            reason = f"several files for name {name!r} ({files}); keep one copy"
            skipped += [(p, reason) for p in ims + mks]
        else:
            split = spec.split_of(_relative(ims[0], raw)) if spec.split_of else None
            candidates.append(Sample(name, ims[0], tuple(mks), split))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        checked = list(pool.map(lambda s: _validate(s, spec, decode, max_pixels), candidates))
    samples = [s for s in checked if isinstance(s, Sample)]
    skipped += [(c.image, f"{why} (not converted with it: {', '.join(map(str, c.masks))})")
                for c, why in zip(candidates, checked, strict=True) if isinstance(why, str)]
    return samples, skipped


def packaged_split(dataset: str, split: str) -> list[str]:
    """Names of a split list shipped with the package (``condseg/data/splits/<dataset>/``)."""
    listed = resources.files("condseg.data").joinpath("splits", dataset, f"{split}.txt")
    return split_names(listed.read_text(encoding="utf-8"))


def _scaled(sizes: Mapping[str, float], total: int) -> dict[str, int]:
    """The stated split sizes (counts or fractions), scaled to ``total`` by largest remainder."""
    stated = sum(sizes.values())
    if total == stated:
        return {s: int(n) for s, n in sizes.items()}
    exact = {s: n * total / stated for s, n in sizes.items()}
    counts = {s: int(v) for s, v in exact.items()}
    by_remainder = sorted(sizes, key=lambda s: counts[s] - exact[s])
    for s in by_remainder[: total - sum(counts.values())]:
        counts[s] += 1
    return counts


def _strata(names: Sequence[str], stratum: Callable[[str], str], seed: int) -> list[list[str]]:
    """The names grouped by stratum (in sorted stratum order), each group shuffled."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(stratum(name), []).append(name)
    return [rng.permutation(groups[key]).tolist() for key in sorted(groups)]


def _cut(groups: list[list[str]], sizes: Mapping[str, float]) -> dict[str, list[str]]:
    """Consecutive parts of the strata interleaved evenly, in the proportions of ``sizes``
    (largest remainder): every part has its share of each stratum, give or take one, and the
    totals are exact."""
    keyed = [((j + 0.5) / len(g), i, n) for i, g in enumerate(groups) for j, n in enumerate(g)]
    order = [name for *_, name in sorted(keyed)]
    parts, start = {}, 0
    for split, count in _scaled(sizes, len(order)).items():
        parts[split], start = order[start : start + count], start + count
    return parts


def _folds(groups: list[list[str]], k: int) -> dict[str, list[str]]:
    """``folds/<j>/train`` and ``folds/<j>/val`` for j < k, plus ``train``/``val`` = fold 0.

    Dealing the strata one after the other round-robin gives every fold the same number of
    each stratum, give or take one."""
    order = [name for members in groups for name in members]
    folds = [order[j::k] for j in range(k)]
    splits: dict[str, list[str]] = {}
    for j in range(k):
        splits[f"folds/{j}/train"] = sorted(n for i, f in enumerate(folds) if i != j for n in f)
        splits[f"folds/{j}/val"] = sorted(folds[j])
    splits["train"], splits["val"] = splits["folds/0/train"], splits["folds/0/val"]
    return splits


def _release_splits(
    name: str, spec: DatasetSpec, samples: list[Sample], seed: int
) -> tuple[dict[str, list[str]], dict[str, object]]:
    """Split files of a public release and the record of where they came from."""
    names = [s.name for s in samples]
    source: SplitSource = spec.split_source
    if source == "release" and any(s.split is None for s in samples):
        source = "seeded"  # a flattened download has lost the release's folders
    if source == "packaged":
        splits = {split: packaged_split(name, split) for split in spec.sizes}
        available = set(names)
        missing = [n for listed in splits.values() for n in listed if n not in available]
        if missing:
            raise DataError(
                f"{len(missing)} names of the packaged {name} split have no usable image + mask "
                f"pair in RAW: {_examples(missing)}"
            )
    elif source == "release":
        splits = {split: sorted(s.name for s in samples if s.split == split)
                  for split in spec.sizes}
    elif source == "folds":  # stratified by class, the first word of the name
        splits = _folds(_strata(names, lambda n: n.split(" ")[0], seed), N_FOLDS)
    else:
        parts = _cut(_strata(names, lambda n: "", seed), spec.sizes)
        splits = {split: sorted(part) for split, part in parts.items()}
    info: dict[str, object] = {
        "dataset": name,
        "release": spec.title,
        "source": {
            "packaged": f"split lists packaged with condseg (condseg/data/splits/{name}/)",
            "release": "the release's own train/test folders or file names",
            "seeded": f"seeded random split (numpy default_rng({seed})) of the stated sizes",
            "folds": f"seeded {N_FOLDS}-fold split stratified by class (default_rng({seed})) "
            "in folds/<k>/; train/val = fold 0",
        }[source],
        "seed": seed if source in ("seeded", "folds") else None,
        "counts": {split: len(listed) for split, listed in splits.items()},
        "paper_sizes": spec.sizes,
    }
    return splits, info


def _folder_splits(
    samples: list[Sample],
    fractions: Sequence[float] | None,
    folds: int | None,
    test: float | None,
    seed: int,
) -> tuple[dict[str, list[str]], dict[str, object]]:
    """A seeded train/val[/test] split or k folds (plus an optional held-out test split), both
    stratified by empty / non-empty mask."""
    foreground = {s.name: s.foreground for s in samples}
    strata = _strata(list(foreground), lambda n: "non-empty" if foreground[n] else "empty", seed)
    if folds is None:
        if test is not None:
            raise DataError("--test goes with --folds; with --split give train,val,test fractions")
        fractions = tuple(fractions or (0.8, 0.1, 0.1))
        if len(fractions) not in (2, 3) or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
            raise DataError(
                f"--split takes 2 or 3 positive fractions (train,val[,test]) adding up to 1, got "
                f"{','.join(map(str, fractions))}"
            )
        sizes = dict(zip(("train", "val", "test"), fractions, strict=False))
        splits = {split: sorted(part) for split, part in _cut(strata, sizes).items()}
        how = f"seeded split {','.join(map(str, fractions))} (train,val[,test])"
    else:
        if fractions is not None:
            raise DataError("give either --split or --folds, not both")
        test = test or 0.0
        if folds < 2 or not 0 <= test < 1:
            raise DataError(f"--folds needs at least 2 folds and --test a fraction below 1, got "
                            f"{folds} folds and test {test}")
        held_out = set(_cut(strata, {"test": test, "folds": 1 - test})["test"])
        splits = _folds([[n for n in group if n not in held_out] for group in strata], folds)
        if test:
            splits["test"] = sorted(held_out)
        how = f"seeded {folds}-fold split in folds/<k>/ (train/val = fold 0)" + (
            f", test {test} held out of all folds" if test else "")
    info: dict[str, object] = {
        "dataset": "folder",
        "source": f"{how}, stratified by empty/non-empty mask (numpy default_rng({seed}))",
        "seed": seed,
        "split": list(fractions) if folds is None else None,
        "folds": folds,
        "test": test if folds is not None else None,
        "strata": {"empty": sum(not f for f in foreground.values()),
                   "non-empty": sum(map(bool, foreground.values()))},
        "counts": {split: len(names) for split, names in splits.items()},
    }
    return splits, info


def _place(source: Path, target: Path, link: bool) -> None:
    """Copy, or hard-link (falling back to a copy across file systems)."""
    if link:
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copy2(source, target)


def _foreground(values: np.ndarray, full: int, spec: DatasetSpec) -> np.ndarray:
    """Instance label maps: any label; binary masks: at least half of the format's range."""
    return values > 0 if spec.masks == "labels" else values >= mask_threshold(full)


def _write_sample(sample: Sample, spec: DatasetSpec, out: Path, link: bool) -> None:
    """The image (as it is) and its mask: copied, or a 0/255 PNG from instance labels or the
    union of several masks."""
    _place(sample.image, out / "images" / (sample.name + sample.image.suffix.lower()), link)
    if spec.masks == "copy":
        mask = sample.masks[0]
        _place(mask, out / "masks" / (sample.name + mask.suffix.lower()), link)
        return
    foreground = np.logical_or.reduce(
        [_foreground(*read_mask_values(mask), spec) for mask in sample.masks]
    )
    target = out / "masks" / f"{sample.name}.png"
    if not cv2.imwrite(str(target), np.where(foreground, 255, 0).astype(np.uint8)):
        raise OSError(f"could not write {target}")


def _convert(
    spec: DatasetSpec,
    raw: Path,
    out: Path,
    assign: Callable[[list[Sample]], tuple[dict[str, list[str]], dict[str, object]]],
    *,
    roots: Mapping[str, Path] | None = None,
    swap: bool = False,
    link: bool = False,
    decode: bool = False,
    max_pixels: int | None = None,
) -> Path:
    """The pipeline of the module docstring; ``assign`` turns the samples into split files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} is not an empty folder; choose a new or empty output folder")
    check_staged(out)
    found, suffixes, others = _find(spec, raw, roots)
    if not found["image"]:
        raise DataError(f"no image files found under {raw} (expected {spec.title})")
    _check_swapped(found, swap)
    samples, skipped = _pair(spec, raw, found, decode or spec.masks != "copy", max_pixels)
    if spec.split_source == "folder":  # the user's folders: every entry is accounted for
        skipped += others
    if not samples:
        reasons = _examples([f"{path}: {why}" for path, why in skipped], limit=3)
        raise DataError(f"no usable image + mask pair under {raw} (expected {spec.title}); "
                        f"{len(skipped)} files not converted: {reasons}")
    try:
        splits, info = assign(samples)
    except DataError as exc:
        if not skipped:
            raise
        raise DataError(f"{exc}; {len(skipped)} files were not converted, e.g. "
                        f"{skipped[0][0]}: {skipped[0][1]}") from exc
    empty = [split for split, names in splits.items() if not names]
    if empty:
        raise DataError(f"{len(samples)} usable pairs are too few for this split: "
                        f"{', '.join(empty)} would be empty")
    listed = {n for names in splits.values() for n in names}
    written = [s for s in samples if s.name in listed]
    info.update({
        "pairs_found": len(samples),
        "written": len(written),
        "not_converted": len(skipped),
        "not_converted_list": NOT_CONVERTED if skipped else None,
    })
    if spec.split_source == "folder":
        info["mask_suffixes"] = {s or "(none)": n for s, n in sorted(suffixes.items())}
    with staged(out) as tmp:
        for kind in ("images", "masks"):
            (tmp / kind).mkdir()
        for sample in written:
            try:
                _write_sample(sample, spec, tmp, link)
            except OSError as exc:
                raise DataError(f"cannot convert {sample.image}: {exc}") from exc
        for split, names in splits.items():
            (tmp / f"{split}.txt").parent.mkdir(parents=True, exist_ok=True)
            write_split(tmp / f"{split}.txt", names)
        if skipped:
            _write_not_converted(tmp / NOT_CONVERTED, skipped)
        (tmp / "split_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def _write_not_converted(path: Path, skipped: list[tuple[Path, str]]) -> None:
    """``file<TAB>reason`` rows, quoted as CSV quotes them where a file name holds a tab, a
    quote or a line break (``csv.reader(f, delimiter="\\t")`` reads them back)."""
    with path.open("w", encoding="utf-8", errors="surrogateescape", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["file", "reason"])
        writer.writerows((str(file), why) for file, why in skipped)


def prepare(
    name: str,
    raw: str | Path,
    out: str | Path,
    seed: int = 0,
    link: bool = False,
    *,
    images: str | Path | None = None,
    masks: str | Path | None = None,
    swap: bool = False,
    max_pixels: int | None = None,
) -> Path:
    """Convert the public release ``name`` in ``raw`` into the canonical layout in ``out``.

    ``images``/``masks`` name the folders holding them (relative to ``raw``) when the release's
    folder names are not recognised; ``swap`` exchanges images and masks. ``link`` hard-links
    unchanged files instead of copying them (they then share storage with RAW: do not edit them
    in place). Refuses a non-empty ``out``.
    """
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} (a folder of "
            "your own: prepare_folder, CLI `data prepare folder`)"
        )
    spec = DATASETS[name]
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise DataError(f"RAW folder {raw} not found: unpack the {name} release there first")
    roots = None
    if (images is None) != (masks is None):
        raise DataError("give both --images and --masks (folders relative to RAW), or neither")
    if images is not None and masks is not None:
        roots = {"image": raw / images, "mask": raw / masks}
        for folder in roots.values():
            if not folder.is_dir():
                raise DataError(f"folder {folder} not found (--images/--masks are relative to RAW)")
        if swap:
            roots = {"image": roots["mask"], "mask": roots["image"]}
    elif swap:
        spec = spec.swapped()
    return _convert(spec, raw, out, lambda s: _release_splits(name, spec, s, seed), roots=roots,
                    swap=swap, link=link, max_pixels=max_pixels)


def prepare_folder(
    images: str | Path,
    masks: str | Path,
    out: str | Path,
    *,
    split: Sequence[float] | None = None,
    folds: int | None = None,
    test: float | None = None,
    seed: int = 0,
    link: bool = False,
    swap: bool = False,
    max_pixels: int | None = None,
) -> Path:
    """Convert a folder of images and a folder of masks (may be the same folder) into the
    canonical layout, paired by name (mask suffixes such as ``_mask`` recognised).

    The split is seeded and stratified by empty / non-empty mask: ``split`` fractions
    (train, val[, test]; default 0.8, 0.1, 0.1), or ``folds`` k folds written to
    ``folds/<k>/{train,val}.txt`` (``train.txt``/``val.txt`` = fold 0), with a ``test``
    fraction held out of all folds. Recorded in ``split_info.json``.
    """
    images, masks, out = Path(images), Path(masks), Path(out)
    for folder in (images, masks):
        if not folder.is_dir():
            raise DataError(f"folder {folder} not found")
    if swap:
        images, masks = masks, images

    def assign(samples: list[Sample]) -> tuple[dict[str, list[str]], dict[str, object]]:
        splits, info = _folder_splits(samples, split, folds, test, seed)
        return splits, {"images": str(images), "masks": str(masks), **info}

    spec = folder_spec(same_folder=images.resolve() == masks.resolve())
    return _convert(spec, images, out, assign, roots={"image": images, "mask": masks},
                    swap=swap, link=link, decode=True, max_pixels=max_pixels)
