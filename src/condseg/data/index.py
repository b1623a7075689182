"""The files of a canonical dataset folder by name: ``ROOT/images/<name>.<ext>`` and
``ROOT/masks/<name>.<ext>`` (the two extensions may differ), each folder scanned once."""

from __future__ import annotations

from pathlib import Path

from condseg.data.names import IMAGE_EXTENSIONS, name_key, scan_folder
from condseg.errors import DataError
from condseg.layout import DatasetDir


def image_files(folder: str | Path) -> list[Path]:
    """The image files of ``folder``, sorted (:func:`~condseg.data.names.scan_folder`: entries
    with an image extension, unreadable ones included so that reading them reports them)."""
    return scan_folder(folder).images


def _index_folder(folder: Path) -> tuple[dict[str, list[Path]], list[tuple[Path, str]]]:
    """Map each name (:func:`~condseg.data.names.name_key` of the stem) to its image files in
    ``folder`` (any case of extension); and the entries that are not image files, with why."""
    if not folder.is_dir():
        raise DataError(
            f"folder {folder} not found: the dataset layout is ROOT/images/<name>.<ext> and "
            "ROOT/masks/<name>.<ext>"
        )
    index: dict[str, list[Path]] = {}
    scan = scan_folder(folder)
    for path in scan.images:
        index.setdefault(name_key(path.stem), []).append(path)
    return index, scan.skipped


class FolderIndex:
    """Index of ``images/`` and ``masks/`` built with one directory scan each, so resolving the
    names of a large dataset does not rescan the folders per name. ``folders``, ``files`` and
    ``skipped`` are keyed by kind ("image" or "mask"); ``skipped`` holds each folder's entries
    that are not image files (:func:`~condseg.data.names.scan_folder`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        layout = DatasetDir(self.root)
        self.folders = {"image": layout.images, "mask": layout.masks}
        scans = {kind: _index_folder(folder) for kind, folder in self.folders.items()}
        self.files = {kind: scan[0] for kind, scan in scans.items()}
        self.skipped = {kind: scan[1] for kind, scan in scans.items()}

    def find(self, kind: str, name: str) -> Path:
        """The single file of ``kind`` ("image" or "mask") for ``name``; DataError otherwise."""
        candidates = self.files[kind].get(name_key(name), [])
        if len(candidates) > 1:
            listed = ", ".join(str(p) for p in candidates)
            raise DataError(f"ambiguous {kind} for {name!r}: {listed}; keep only one of them")
        if not candidates:
            hint = ""
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                hint = " (split files list names without extension)"
            raise DataError(
                f"no {kind} file for {name!r} in {self.folders[kind]} "
                f"(looked for {name}.{{{','.join(e[1:] for e in IMAGE_EXTENSIONS)}}}){hint}"
            )
        return candidates[0]

    def pair(self, name: str) -> tuple[Path, Path]:
        """(image, mask) paths for ``name``."""
        return self.find("image", name), self.find("mask", name)


def find_pair(root: str | Path, name: str) -> tuple[Path, Path]:
    """``(images/<name>.<ext>, masks/<name>.<ext>)``; the two extensions may differ."""
    return FolderIndex(root).pair(name)
