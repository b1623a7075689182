"""The public releases and their converters: Kvasir-SEG and Kvasir-Sessile (packaged lists),
GlaS and ISIC (the release's own folders), CVC-ClinicDB (a seeded split of the paper's sizes)
and BUSI (seeded class-stratified folds; with ``classes``, its benign and malignant folders as
two classes), each described by a :class:`~condseg.data.prepare.spec.DatasetSpec`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from importlib import resources
from pathlib import Path

from condseg.data.labels import Labels
from condseg.data.prepare.pipeline import convert
from condseg.data.prepare.spec import ANY_IMAGE, DatasetSpec, Sample, SplitSource, examples
from condseg.data.prepare.stratify import k_folds, proportional_cut, shuffled_strata
from condseg.data.split_files import split_names
from condseg.errors import DataError
from condseg.layout import DatasetDir

#: Folder names (case-insensitive) recognised as holding a release's images and its masks.
IMAGE_DIRS = r"images?|imgs?|originals?|frames?|inputs?"
MASK_DIRS = r"masks?|ground ?truths?|gts?|labels?|annotations?|segmentations?"


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
        rf"(?P<name>.+){ANY_IMAGE}",
        rf"(?P<name>.+){ANY_IMAGE}",
        {"train": 880, "val": 120},
        "packaged",
        image_dir=IMAGE_DIRS,
        mask_dir=MASK_DIRS,
    ),
    "kvasir-sessile": DatasetSpec(
        "Kvasir-Sessile (or Kvasir-SEG): images/*.jpg + masks/*.jpg; packaged 156/20/20 lists "
        "(a seeded split of the paper's sizes: the paper published no lists)",
        rf"(?P<name>.+){ANY_IMAGE}",
        rf"(?P<name>.+){ANY_IMAGE}",
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
        rf"(?P<name>\d+){ANY_IMAGE}",
        rf"(?P<name>\d+){ANY_IMAGE}",
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

#: BUSI's class folders as classes (``prepare busi --classes``): a merged lesion mask written
#: as the id of its image's class; ``normal`` images are all background.
BUSI_LABELS = Labels(("background", "benign", "malignant"), (0, 1, 2))


def _busi_class(name: str) -> int:
    """The class id of a BUSI image from its name (``benign (12)``); normal: background."""
    kind = name.split(" ")[0].lower()
    return BUSI_LABELS.names.index(kind) if kind in BUSI_LABELS.names[1:] else 0


#: The releases whose folders are classes (``classes=True``): their declaration and the class
#: of a sample's name.
CLASSES: dict[str, tuple[Labels, Callable[[str], int]]] = {"busi": (BUSI_LABELS, _busi_class)}


def packaged_split(dataset: str, split: str) -> list[str]:
    """Names of a split list shipped with the package (``condseg/data/splits/<dataset>/``)."""
    listed = resources.files("condseg.data").joinpath(
        "splits", dataset, DatasetDir(Path()).split(split).as_posix())
    return split_names(listed.read_text(encoding="utf-8"))


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
                f"pair in RAW: {examples(missing)}"
            )
    elif source == "release":
        splits = {split: sorted(s.name for s in samples if s.split == split)
                  for split in spec.sizes}
    elif source == "folds":  # stratified by class, the first word of the name
        splits = k_folds(shuffled_strata(names, lambda n: n.split(" ")[0], seed), N_FOLDS)
    else:
        parts = proportional_cut(shuffled_strata(names, lambda n: "", seed), spec.sizes)
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
    classes: bool = False,
) -> Path:
    """Convert the public release ``name`` in ``raw`` into the canonical layout in ``out``.

    ``images``/``masks`` name the folders holding them (relative to ``raw``) when the release's
    folder names are not recognised; ``swap`` exchanges images and masks. ``link`` hard-links
    unchanged files instead of copying them (they then share storage with RAW: do not edit them
    in place). ``classes`` writes a release's classes (:data:`CLASSES`: BUSI's benign and
    malignant) as class-id masks with their ``labels.json``. Refuses a non-empty ``out``.
    """
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} (a folder of "
            "your own: prepare_folder, CLI `data prepare folder`)"
        )
    spec = DATASETS[name]
    if classes:
        if name not in CLASSES:
            raise DataError(f"{name} has no classes to keep (--classes): it is binary; "
                            f"--classes is for {', '.join(CLASSES)}")
        labels, class_of = CLASSES[name]
        spec = replace(spec, labels=labels, class_of=class_of)
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
    return convert(spec, raw, out, lambda s: _release_splits(name, spec, s, seed), roots=roots,
                   swap=swap, link=link, max_pixels=max_pixels)
