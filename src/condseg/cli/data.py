"""``condseg data``: prepare, check and synthesise datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from condseg.cli.options import MaxPixels
from condseg.cli.render import console, user_errors


def data_prepare(
    dataset: Annotated[str, typer.Argument(help="kvasir-seg, kvasir-sessile, glas, isic2016, "
                                                "isic2017, cvc-clinicdb, busi, or folder.")],
    paths: Annotated[list[Path], typer.Argument(
        help="RAW OUT: the release as unpacked and a new folder; for folder: IMAGES MASKS OUT.",
        show_default=False)],
    images: Annotated[Path | None, typer.Option(
        help="Release: the folder holding the images, relative to RAW.")] = None,
    masks: Annotated[Path | None, typer.Option(
        help="Release: the folder holding the masks, relative to RAW.")] = None,
    swap: Annotated[bool, typer.Option(help="Exchange images and masks.")] = False,
    split: Annotated[str | None, typer.Option(
        help="folder: train,val[,test] fractions (default 0.8,0.1,0.1).")] = None,
    folds: Annotated[int | None, typer.Option(
        help="folder: K folds in OUT/folds/<k>/ instead of --split.")] = None,
    test: Annotated[float | None, typer.Option(
        help="folder with --folds: fraction held out of all folds as test.txt.")] = None,
    seed: Annotated[int, typer.Option(
        min=0, max=2**32 - 1, help="Seed of the split when none is shipped.")] = 0,
    link: Annotated[bool, typer.Option(help="Hard-link unchanged images and masks.")] = False,
    labels: Annotated[str | None, typer.Option(
        help="folder: the masks' classes as name=value pairs, background first, e.g. "
             "background=0,rnfl=80,gcipl=160 (written as OUT/labels.json).")] = None,
    classes: Annotated[bool, typer.Option(
        help="busi: keep the class folders as classes (background, benign, malignant).")
    ] = False,
    max_pixels: MaxPixels = None,
) -> None:
    """Convert a public release (DATASET RAW OUT) or a folder of images and a folder of masks
    (folder IMAGES MASKS OUT) into the canonical layout with a recorded split."""
    import json

    from rich.markup import escape

    from condseg.data.labels import parse_labels_option, read_labels
    from condseg.data.prepare import prepare, prepare_folder
    from condseg.errors import OptionError
    from condseg.layout import DatasetDir

    with user_errors():
        if len(paths) != (3 if dataset == "folder" else 2):
            usage = "folder IMAGES MASKS OUT" if dataset == "folder" else f"{dataset} RAW OUT"
            raise OptionError(f"expected `condseg data prepare {usage}`, got {len(paths)} paths")
        if dataset == "folder":
            if images or masks or classes:
                raise OptionError("--images/--masks/--classes are for releases; folder takes "
                                  "IMAGES MASKS (and --labels for classes)")
            fractions = _fractions(split) if split else None
            declared = parse_labels_option(labels) if labels is not None else None
            path = prepare_folder(*paths, split=fractions, folds=folds, test=test, seed=seed,
                                  link=link, swap=swap, max_pixels=max_pixels, labels=declared)
        else:
            if split or folds or test is not None or labels is not None:
                raise OptionError("--split/--folds/--test/--labels are for `data prepare "
                                  f"folder`; {dataset} has its own split (and --classes)")
            path = prepare(dataset, *paths, seed=seed, link=link, images=images, masks=masks,
                           swap=swap, max_pixels=max_pixels, classes=classes)
        declared = read_labels(path)
    info = json.loads(DatasetDir(path).split_info.read_text())
    counts = ", ".join(f"{s} {n}" for s, n in info["counts"].items() if "/" not in s)
    lines = [f"wrote {escape(str(path))} ({counts}; split: {escape(info['source'])})"]
    if declared is not None:
        lines.append(f"classes: {escape(declared.describe())} "
                     f"({escape(str(DatasetDir(path).labels))})")
    if info.get("mask_suffixes"):
        found = ", ".join(f"{s} {n}" for s, n in info["mask_suffixes"].items())
        lines.append(f"masks paired by name suffix: {escape(found)}")
    if info["not_converted"]:
        lines.append(f"[yellow]{info['not_converted']} files not converted[/] (unpaired, "
                     "unreadable, of another size than their image, or not images): see "
                     f"{escape(str(path / info['not_converted_list']))}")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _fractions(text: str) -> list[float]:
    from condseg.errors import OptionError

    try:
        return [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise OptionError(f"--split takes fractions like 0.8,0.1,0.1, got {text!r}") from exc


def data_check(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder in the canonical layout.")],
    split: Annotated[list[str] | None, typer.Option(
        help="Split(s) to check (default: train, val, and test when present)."
    )] = None,
    max_pixels: MaxPixels = None,
) -> None:
    """Verify every listed image and mask; exit 1 when there are errors."""
    from condseg.data.check import check_dataset

    with user_errors():
        report = check_dataset(dataset, splits=split or None, max_pixels=max_pixels)
    report.print(console)
    if not report.ok:
        raise typer.Exit(1)


def data_synth(
    out: Annotated[Path, typer.Argument(help="New folder for the synthetic dataset.")],
    train: Annotated[int, typer.Option(help="Training images.")] = 48,
    val: Annotated[int, typer.Option(help="Validation images.")] = 16,
    size: Annotated[int | None, typer.Option(
        help="Image side in pixels (default 128; volumes 32).")] = None,
    seed: Annotated[int, typer.Option(
        min=0, max=2**32 - 1, help="Random seed (same seed, same files).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty OUT.")] = False,
    task: Annotated[str, typer.Option(
        help="lesions: endoscopy-like, binary; layers: OCT-like B-scans with three layers "
             "(4 classes with background); volumes: MRI-like 3-D cubes with a gland and its "
             "core (3 classes with background; --format nnunet).")] = "lesions",
    format: Annotated[str, typer.Option(
        "--format", help="condseg: the canonical layout; nnunet: nnU-Net v2's raw dataset "
                         "(dataset.json, imagesTr, labelsTr; layers or volumes).")] = "condseg",
) -> None:
    """Write an embedded synthetic dataset: endoscopy-like lesions (binary; used by the demo
    and the tests), OCT-like retinal layers (multi-class) or MRI-like volumes (3-D, for
    nnU-Net)."""
    from condseg.data.synthetic import synthesize

    with user_errors():
        path = synthesize(out, n_train=train, n_val=val, size=size, seed=seed, overwrite=overwrite,
                          task=task, format=format)
    console.print(f"wrote {path}")
