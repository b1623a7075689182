"""What counts as an image file and as a name: the one rule that folder listings, split files,
converters and prediction share, so that no command takes a file another one drops.

A *name* is a file's stem in Unicode NFC without surrounding whitespace (:func:`name_key`):
split files list names one per line, so a name may hold any character except a line break
(``\\n``, ``\\r``) and must be valid UTF-8. A file whose name cannot be listed is reported by
file (:func:`unlistable`), never written into a split file that could not be read back.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

#: Extensions (any case) of the image files that folders are searched for: what Pillow reads
#: and users have — JPEG under all its names, PNG, BMP, GIF (single frame), WebP, TIFF,
#: JPEG 2000 and the Netpbm family (STARE's .ppm). Other files are reported, not read.
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
    ".jp2", ".pbm", ".pgm", ".ppm", ".pnm",
)
TIFF_EXTENSIONS = (".tif", ".tiff")


def name_key(text: str) -> str:
    """The name under which a stem or a split-file line is matched: NFC, surrounding whitespace
    removed (macOS writes NFD file names; a trailing space is invisible in a split file)."""
    return unicodedata.normalize("NFC", text).strip()


def unlistable(name: str) -> str | None:
    """Why ``name`` cannot be listed in a split file (None: it can)."""
    if "\n" in name or "\r" in name:
        return "its name contains a line break, which a split file (one name per line) cannot hold"
    if not name_key(name):
        return "its name is blank"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8, which split files are written in"
    return None


def is_image_file(path: Path) -> bool:
    """An image extension and not hidden (a dot file such as macOS's ``._x.jpg`` is metadata)."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def shown(text: str | Path) -> str:
    """``text`` on one line: line breaks and other unprintable characters escaped (``\\n``,
    ``\\u2028``), so that a file name cannot split a message or a report row."""
    return "".join(
        c if c.isprintable() or c == " " else c.encode("unicode_escape", "backslashreplace")
        .decode("ascii") for c in str(text)
    )


@dataclass
class FolderScan:
    """A folder's entries: ``images`` (sorted) and every other entry with why it was skipped."""

    images: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def skip_reason(path: Path) -> str:
    """Why a folder entry that is not an image file is left out."""
    if path.name.startswith("."):
        return "hidden entry"
    if path.is_dir():
        return "subfolder, not searched"
    return f"not an image file type ({path.suffix or 'no extension'})"


def scan_folder(folder: str | Path) -> FolderScan:
    """Split the entries of ``folder`` into image files and skipped entries.

    An entry with an image extension that is not a readable file (a looping or dangling link, a
    folder or a FIFO named ``x.png``) counts as an image on purpose: reading it raises a
    DataError naming it, without opening it, where filtering it out would drop it silently.
    """
    scan = FolderScan()
    for path in sorted(Path(folder).iterdir()):
        if is_image_file(path):
            scan.images.append(path)
        else:
            scan.skipped.append((path, skip_reason(path)))
    return scan
