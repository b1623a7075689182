"""Finding a source's image and mask files, and refusing folders that look swapped.

Files are searched anywhere under RAW (folder links followed, each real folder once), so the
nesting of a download does not matter; every entry that is not taken is kept with the reason.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from condseg.data.names import name_key, skip_reason
from condseg.data.prepare.spec import DatasetSpec, examples
from condseg.data.reading import colour_and_alpha, read_values
from condseg.errors import DataError

SWAP_SAMPLE = 8  # files of each kind looked at to tell whether images and masks are swapped


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


def find_files(
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


def _looks_like_mask(path: Path, most: int) -> bool | None:
    """One channel (or equal channels) and at most ``most`` values; None if unreadable."""
    try:
        values, _ = colour_and_alpha(*read_values(path))
    except DataError:
        return None
    if values.ndim == 3 and not (values == values[:, :, :1]).all():
        return False
    return len(np.unique(values)) <= most


def _mostly_masks(files: list[Path], most: int) -> bool:
    """Do most of (up to SWAP_SAMPLE evenly spaced) ``files`` look like masks?"""
    sample = files[:: max(1, len(files) // SWAP_SAMPLE)][:SWAP_SAMPLE]
    looks = [v for v in (_looks_like_mask(path, most) for path in sample) if v is not None]
    return bool(looks) and sum(looks) > len(looks) / 2


def check_swapped(found: Found, swap: bool, values: int = 2) -> None:
    """Refuse when the "images" look like masks and the "masks" do not (swapped folders);
    a mask holds at most ``values`` values (two, or a declaration's classes)."""
    images, masks = (sorted(p for ps in found[k].values() for p in ps) for k in ("image", "mask"))
    if images and masks and _mostly_masks(images, values) and not _mostly_masks(masks, values):
        count = "two" if values == 2 else f"at most {values}"
        where = examples(sorted({str(p.parent) for p in images}), limit=2)
        todo = "drop --swap" if swap else "pass --swap to exchange them"
        raise DataError(
            f"the images ({where}) look like masks (one channel, {count} values) and the masks "
            f"like images: are images and masks swapped? {todo}"
        )
