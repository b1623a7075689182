"""Pairing found files by name and checking each pair from its files' headers: what does not
pair, does not open, has a name a split file cannot list or a mask of another size than its
image is left out with the reason, never silently dropped and never a reason to refuse the
rest."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from condseg.data.labels import IGNORE_ID, class_ids, label_values
from condseg.data.masks import mask_problems, read_mask_values
from condseg.data.names import unlistable
from condseg.data.prepare.find import Found
from condseg.data.prepare.spec import DatasetSpec, Sample
from condseg.data.reading import image_size
from condseg.errors import DataError


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
    would refuse, such as a 0/1 label map, is refused unless the spec's masks are label maps;
    class masks are read by the spec's declaration, a value it does not declare refused);
    otherwise only the headers are read."""
    labels = spec.source_labels
    try:
        height, width = image_size(sample.image, max_pixels)
        foreground = False
        for mask in sample.masks:
            if decode and labels is not None:
                values, _ = label_values(mask, max_pixels)
                classes = class_ids(values, labels, mask)  # an undeclared value: the reason
                shape = values.shape
                foreground = foreground or bool(((classes > 0) & (classes != IGNORE_ID)).any())
            elif decode:
                values, full = read_mask_values(mask, max_pixels)
                errors = [m for level, m in mask_problems(values, full) if level == "error"]
                if errors and spec.masks != "labels":
                    return f"mask {mask}: {errors[0]}"
                shape = values.shape
                foreground = foreground or bool(spec.foreground(values, full).any())
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


def pair_samples(
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
