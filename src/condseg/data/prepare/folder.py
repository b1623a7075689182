"""``prepare folder``: a folder of images and a folder of masks of one's own (may be the same
folder), paired by name, with a seeded split or k folds stratified by empty / non-empty mask."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from condseg.data.labels import Labels
from condseg.data.prepare.pipeline import convert
from condseg.data.prepare.spec import ANY_IMAGE, DatasetSpec, Sample
from condseg.data.prepare.stratify import k_folds, proportional_cut, shuffled_strata
from condseg.errors import DataError

#: Mask name suffixes recognised by ``prepare folder`` (after ``_`` or ``-``, any case).
MASK_SUFFIXES = ("mask", "segmentation", "seg", "gt", "label", "labels")


def folder_spec(same_folder: bool) -> DatasetSpec:
    """``prepare folder``: any image file; a mask pairs with the image of its stem, or of its
    stem without one of :data:`MASK_SUFFIXES` (required when images and masks share a folder)."""
    optional = "" if same_folder else "?"
    suffix = rf"(?P<suffix>[_-](?:{'|'.join(MASK_SUFFIXES)})){optional}"
    return DatasetSpec(
        "a folder of images and a folder of masks paired by name",
        rf"(?P<name>.+){ANY_IMAGE}",
        rf"(?P<name>.+?){suffix}{ANY_IMAGE}",
        {},
        "folder",
    )


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
    strata = shuffled_strata(list(foreground),
                             lambda n: "non-empty" if foreground[n] else "empty", seed)
    if folds is None:
        if test is not None:
            raise DataError("--test goes with --folds; with --split give train,val,test fractions")
        fractions = tuple(fractions or (0.8, 0.1, 0.1))
        if (len(fractions) not in (2, 3) or not all(0 < f < 1 for f in fractions)  # NaN too
                or abs(sum(fractions) - 1) > 1e-6):
            raise DataError(
                f"--split takes 2 or 3 positive fractions (train,val[,test]) adding up to 1, got "
                f"{','.join(map(str, fractions))}"
            )
        sizes = dict(zip(("train", "val", "test"), fractions, strict=False))
        splits = {split: sorted(part) for split, part in proportional_cut(strata, sizes).items()}
        how = f"seeded split {','.join(map(str, fractions))} (train,val[,test])"
    else:
        if fractions is not None:
            raise DataError("give either --split or --folds, not both")
        test = test or 0.0
        if folds < 2 or not 0 <= test < 1:
            raise DataError(f"--folds needs at least 2 folds and --test a fraction below 1, got "
                            f"{folds} folds and test {test}")
        if folds > len(samples):  # refused before k_folds builds them all
            raise DataError(f"{len(samples)} usable pairs are too few for this split: "
                            f"folds/{folds - 1}/val would be empty")
        held_out = set(proportional_cut(strata, {"test": test, "folds": 1 - test})["test"])
        splits = k_folds([[n for n in group if n not in held_out] for group in strata], folds)
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
    labels: Labels | None = None,
) -> Path:
    """Convert a folder of images and a folder of masks (may be the same folder) into the
    canonical layout, paired by name (mask suffixes such as ``_mask`` recognised).

    The split is seeded and stratified by empty / non-empty mask: ``split`` fractions
    (train, val[, test]; default 0.8, 0.1, 0.1), or ``folds`` k folds written to
    ``folds/<k>/{train,val}.txt`` (``train.txt``/``val.txt`` = fold 0), with a ``test``
    fraction held out of all folds. Recorded in ``split_info.json``. ``labels`` declares the
    masks' classes (written as ``labels.json``; a mask with a value it does not declare is not
    converted, and "non-empty" means holding a foreground class).
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

    spec = replace(folder_spec(same_folder=images.resolve() == masks.resolve()), labels=labels)
    return convert(spec, images, out, assign, roots={"image": images, "mask": masks},
                   swap=swap, link=link, decode=True, max_pixels=max_pixels)
