"""Converters from the public releases to the canonical layout, with the papers' splits.

Each release is described by a :class:`DatasetSpec`: which files are images and masks (regular
expressions on ``<parent folder>/<file name>``, case-insensitive, searched anywhere under RAW so
the nesting of a download does not matter), where its split comes from, and how masks become
binary. RAW is only read. The split used is always recorded in ``OUT/split_info.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from condseg.data.dataset import DataError, read_mask

SplitSource = Literal["packaged", "release", "seeded", "folds"]


@dataclass(frozen=True)
class Sample:
    """One image of a release with its mask file(s) and, if the release says so, its split."""

    name: str
    image: Path
    masks: tuple[Path, ...]
    split: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """How to read one public release (see the module docstring)."""

    title: str
    image_re: str
    mask_re: str
    sizes: dict[str, int]
    split_source: SplitSource
    split_of: Callable[[Path], str | None] | None = None
    # "copy": masks are usable as they are; "labels": instance label maps, foreground = value > 0;
    # "union": several binary masks per image, merged.
    masks: Literal["copy", "labels", "union"] = "copy"


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


_ISIC_IMAGE = r"^[^/]*/(?P<name>isic_\d+)\.jpg$"
_ISIC_MASK = r"^[^/]*/(?P<name>isic_\d+)_segmentation\.png$"

DATASETS: dict[str, DatasetSpec] = {
    "kvasir-seg": DatasetSpec(
        "Kvasir-SEG: images/*.jpg + masks/*.jpg; official 880/120 lists (packaged)",
        r"^images/(?P<name>[^/]+)\.jpg$",
        r"^masks/(?P<name>[^/]+)\.jpg$",
        {"train": 880, "val": 120},
        "packaged",
    ),
    "kvasir-sessile": DatasetSpec(
        "Kvasir-Sessile (or Kvasir-SEG): images/*.jpg + masks/*.jpg; packaged 156/20/20 lists "
        "(a seeded split of the paper's sizes: the paper published no lists)",
        r"^images/(?P<name>[^/]+)\.jpg$",
        r"^masks/(?P<name>[^/]+)\.jpg$",
        {"train": 156, "val": 20, "test": 20},
        "packaged",
    ),
    "glas": DatasetSpec(
        "GlaS: train_*.bmp (train), testA_*/testB_*.bmp (val), *_anno.bmp instance masks",
        r"^[^/]*/(?P<name>(train|testa|testb)_\d+)\.bmp$",
        r"^[^/]*/(?P<name>(train|testa|testb)_\d+)_anno\.bmp$",
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
        "CVC-ClinicDB: Original/*.tif + Ground Truth/*.tif; seeded 550/62 split (as PraNet)",
        r"^original/(?P<name>\d+)\.(tif|tiff|png)$",
        r"^ground ?truth/(?P<name>\d+)\.(tif|tiff|png)$",
        {"train": 550, "val": 62},
        "seeded",
    ),
    "busi": DatasetSpec(
        "BUSI: '<class> (n).png' + '<class> (n)_mask[_k].png' (merged); seeded 4 folds, "
        "train/val = fold 0",
        r"^[^/]*/(?P<name>(benign|malignant|normal) \(\d+\))\.png$",
        r"^[^/]*/(?P<name>(benign|malignant|normal) \(\d+\))_mask(_\d+)?\.png$",
        {"train": 585, "val": 195},
        "folds",
        masks="union",
    ),
}
N_FOLDS = 4


def _examples(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in total)" if len(items) > limit else "")


def _collect(raw: Path, spec: DatasetSpec) -> list[Sample]:
    """Match every file under ``raw`` against the spec's patterns and pair images with masks."""
    images: dict[str, list[Path]] = {}
    masks: dict[str, list[Path]] = {}
    image_re, mask_re = re.compile(spec.image_re, re.I), re.compile(spec.mask_re, re.I)
    for path in sorted(raw.rglob("*")):
        key = f"{path.parent.name}/{path.name}"
        for pattern, found in ((mask_re, masks), (image_re, images)):
            match = pattern.match(key)
            if match and path.is_file():
                found.setdefault(match["name"], []).append(path)
                break
    if not images:
        raise DataError(
            f"no images of {spec.title.split(':')[0]} found under {raw}; expected {spec.title}"
        )
    doubled = [f"{n}: {', '.join(map(str, ps))}" for n, ps in images.items() if len(ps) > 1]
    if spec.masks != "union":
        doubled += [f"{n}: {', '.join(map(str, ps))}" for n, ps in masks.items() if len(ps) > 1]
    if doubled:
        raise DataError(f"two files for one name in {raw} (point RAW at one copy): {doubled[0]}")
    unmatched = [str(images[n][0]) for n in sorted(set(images) - set(masks))]
    unmatched += [str(masks[n][0]) for n in sorted(set(masks) - set(images))]
    if unmatched:
        raise DataError(f"files without their image or mask in {raw}: {_examples(unmatched)}")
    return [
        Sample(
            name,
            images[name][0],
            tuple(masks[name]),
            spec.split_of(images[name][0].relative_to(raw)) if spec.split_of else None,
        )
        for name in sorted(images)
    ]


def packaged_split(dataset: str, split: str) -> list[str]:
    """Names of a split list shipped with the package (``condseg/data/splits/<dataset>/``)."""
    text = resources.files("condseg.data").joinpath("splits", dataset, f"{split}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _scaled(sizes: dict[str, int], total: int) -> dict[str, int]:
    """The stated split sizes, scaled (largest remainder) when the release has another count."""
    stated = sum(sizes.values())
    if total == stated:
        return dict(sizes)
    exact = {s: n * total / stated for s, n in sizes.items()}
    counts = {s: int(v) for s, v in exact.items()}
    by_remainder = sorted(sizes, key=lambda s: counts[s] - exact[s])
    for s in by_remainder[: total - sum(counts.values())]:
        counts[s] += 1
    return counts


def _assign_splits(
    name: str, spec: DatasetSpec, samples: list[Sample], seed: int
) -> tuple[dict[str, list[str]], dict[str, object]]:
    """Split files to write and the record of where they came from."""
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
                f"{len(missing)} names of the packaged {name} split are missing from RAW "
                f"(no image + mask pair): {_examples(missing)}"
            )
    elif source == "release":
        splits = {split: [s.name for s in samples if s.split == split] for split in spec.sizes}
    else:
        rng = np.random.default_rng(seed)
        if source == "folds":
            # Round-robin over the classes' shuffled members: equal folds, stratified by class.
            by_class: dict[str, list[str]] = {}
            for n in names:
                by_class.setdefault(n.split(" ")[0], []).append(n)
            order = [n for c in sorted(by_class) for n in rng.permutation(by_class[c]).tolist()]
            folds = [order[k::N_FOLDS] for k in range(N_FOLDS)]
            splits = {}
            for k in range(N_FOLDS):
                splits[f"fold{k}_train"] = sorted(
                    n for j, f in enumerate(folds) if j != k for n in f
                )
                splits[f"fold{k}_val"] = sorted(folds[k])
            splits["train"], splits["val"] = splits["fold0_train"], splits["fold0_val"]
        else:
            order = rng.permutation(names).tolist()
            splits, start = {}, 0
            for split, count in _scaled(spec.sizes, len(names)).items():
                splits[split] = sorted(order[start : start + count])
                start += count
    info: dict[str, object] = {
        "dataset": name,
        "release": spec.title,
        "source": {
            "packaged": f"split lists packaged with condseg (condseg/data/splits/{name}/)",
            "release": "the release's own train/test folders or file names",
            "seeded": f"seeded random split (numpy default_rng({seed})) of the stated sizes",
            "folds": f"seeded {N_FOLDS}-fold split stratified by class (default_rng({seed})); "
            "train/val = fold 0",
        }[source],
        "seed": seed if source in ("seeded", "folds") else None,
        "counts": {split: len(listed) for split, listed in splits.items()},
        "paper_sizes": spec.sizes,
        "images_in_raw": len(names),
    }
    return splits, info


def _write_mask(sample: Sample, spec: DatasetSpec, target: Path) -> None:
    """A binary 0/255 PNG from instance labels or from the union of several masks."""
    if spec.masks == "labels":
        labels = cv2.imread(str(sample.masks[0]), cv2.IMREAD_UNCHANGED)
        if labels is None:
            raise DataError(f"cannot read mask {sample.masks[0]}")
        foreground = (labels.max(axis=2) if labels.ndim == 3 else labels) > 0
    else:
        foreground = np.logical_or.reduce([read_mask(p) for p in sample.masks])
    cv2.imwrite(str(target), np.where(foreground, 255, 0).astype(np.uint8))


def _place(source: Path, target: Path, link: bool) -> None:
    """Copy, or hard-link (falling back to a copy across file systems)."""
    if link:
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copy2(source, target)


def prepare(name: str, raw: str | Path, out: str | Path, seed: int = 0, link: bool = False) -> Path:
    """Convert the public release ``name`` in ``raw`` into the canonical layout in ``out``.

    ``link`` hard-links unchanged files instead of copying them (they then share storage with
    RAW: do not edit them in place). Refuses a non-empty ``out``.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[name]
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise DataError(f"RAW folder {raw} not found: unpack the {name} release there first")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} is not an empty folder; choose a new or empty output folder")
    samples = _collect(raw, spec)
    splits, info = _assign_splits(name, spec, samples, seed)
    listed = {n for names in splits.values() for n in names}
    samples = [s for s in samples if s.name in listed]
    info["written"] = len(samples)
    for kind in ("images", "masks"):
        (out / kind).mkdir(parents=True, exist_ok=True)
    for sample in samples:
        _place(sample.image, out / "images" / (sample.name + sample.image.suffix.lower()), link)
        if spec.masks == "copy":
            suffix = sample.masks[0].suffix.lower()
            _place(sample.masks[0], out / "masks" / (sample.name + suffix), link)
        else:
            _write_mask(sample, spec, out / "masks" / f"{sample.name}.png")
    for split, names in splits.items():
        (out / f"{split}.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    (out / "split_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out
