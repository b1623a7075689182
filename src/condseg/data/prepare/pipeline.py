"""The one pipeline that converts every source into the canonical layout:

1. find the files (:func:`~condseg.data.prepare.find.find_files`) and refuse folders that look
   swapped (:func:`~condseg.data.prepare.find.check_swapped`);
2. pair them by name and check each pair (:func:`~condseg.data.prepare.pair.pair_samples`):
   what is left out is listed in ``OUT/not_converted.tsv`` with the reason (``prepare folder``
   lists there every other entry of its folders too);
3. assign the split (the caller's ``assign``), recorded in ``OUT/split_info.json``;
4. write everything (and ``labels.json`` when the source declares classes) into a temporary
   sibling folder renamed to OUT at the end
   (:func:`condseg.outputs.staged`), so a failure or an interruption leaves no half-written
   OUT behind, and a second process writing the same OUT is refused.

RAW is only read.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from condseg.data.labels import write_labels
from condseg.data.masks import read_mask_values
from condseg.data.prepare.find import check_swapped, find_files
from condseg.data.prepare.pair import pair_samples
from condseg.data.prepare.spec import DatasetSpec, Sample, examples
from condseg.data.split_files import write_split
from condseg.errors import DataError
from condseg.files import FULL, atomic_file, cannot_write, write_image, write_text
from condseg.layout import DatasetDir
from condseg.outputs import check_staged, staged


def _place(source: Path, target: Path, link: bool) -> None:
    """Copy, or hard-link (falling back to a copy across file systems)."""
    if link:
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    try:
        shutil.copy2(source, target)
    except OSError as error:  # shutil names the source in a full disk's error: name the target
        if error.errno in FULL:
            raise cannot_write(target, error) from error
        raise


def _write_sample(sample: Sample, spec: DatasetSpec, out: DatasetDir, link: bool) -> None:
    """The image (as it is) and its mask: copied, or a 0/255 PNG from instance labels or the
    union of several masks (a class-id PNG with the spec's ``class_of``)."""
    _place(sample.image, out.images / (sample.name + sample.image.suffix.lower()), link)
    if spec.masks == "copy":
        mask = sample.masks[0]
        _place(mask, out.masks / (sample.name + mask.suffix.lower()), link)
        return
    foreground = np.logical_or.reduce(
        [spec.foreground(*read_mask_values(mask)) for mask in sample.masks]
    )
    target = out.masks / f"{sample.name}.png"
    value = 255 if spec.class_of is None else spec.class_of(sample.name)
    write_image(target, np.where(foreground, value, 0).astype(np.uint8))


def convert(
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
    found, suffixes, others = find_files(spec, raw, roots)
    if not found["image"]:
        raise DataError(f"no image files found under {raw} (expected {spec.title})")
    labels = spec.source_labels
    check_swapped(found, swap, 2 if labels is None else len(labels.values) + (labels.ignore
                                                                              is not None))
    samples, skipped = pair_samples(spec, raw, found, decode or spec.masks != "copy", max_pixels)
    if spec.split_source == "folder":  # the user's folders: every entry is accounted for
        skipped += others
    if not samples:
        reasons = examples([f"{path}: {why}" for path, why in skipped], limit=3)
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
        "not_converted_list": DatasetDir(out).not_converted.name if skipped else None,
    })
    if spec.split_source == "folder":
        info["mask_suffixes"] = {s or "(none)": n for s, n in sorted(suffixes.items())}
    with staged(out) as tmp:
        layout = DatasetDir(tmp)
        layout.images.mkdir()
        layout.masks.mkdir()
        for sample in written:
            try:
                _write_sample(sample, spec, layout, link)
            except OSError as exc:
                raise DataError(f"cannot convert {sample.image}: {exc}") from exc
        for split, names in splits.items():
            layout.split(split).parent.mkdir(parents=True, exist_ok=True)
            write_split(layout.split(split), names)
        if skipped:
            _write_not_converted(layout.not_converted, skipped)
        if spec.labels is not None:
            write_labels(tmp, spec.labels)
        write_text(layout.split_info, json.dumps(info, indent=2) + "\n")
    return out


def _write_not_converted(path: Path, skipped: list[tuple[Path, str]]) -> None:
    """``file<TAB>reason`` rows, quoted as CSV quotes them where a file name holds a tab, a
    quote or a line break (``csv.reader(f, delimiter="\\t")`` reads them back)."""
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8", errors="surrogateescape",
                                            newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["file", "reason"])
        writer.writerows((str(file), why) for file, why in skipped)
