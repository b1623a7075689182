"""What a file is, from its first bytes: for the message when a file is given in the wrong
place (a PNG or a ``.pth`` where a model file goes), so that it says what was given instead of
a reader's own advice (torch suggests ``weights_only=False``, which would run the file's code).

And what a path is when it is no regular file, from its metadata alone (:func:`special`):
opening a FIFO waits for a writer and reading a device never ends, so such a path is refused
by name before anything opens it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_SPECIAL = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)

_SIGNATURES = (
    (b"PK\x03\x04", "a zip archive, as PyTorch .pth/.ckpt checkpoints are"),
    (b"\x80", "a Python pickle, as old PyTorch .pth files are"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"\x93NUMPY", "a NumPy array"),
    (b"\x89HDF", "an HDF5 file (Keras/TensorFlow?)"),
)


def mode_kind(mode: int) -> str | None:
    """A few words on a ``st_mode`` that is not a regular file's (None: it is one)."""
    return next((kind for test, kind in _SPECIAL if test(mode)), None)


def special(path: str | Path) -> str | None:
    """What ``path`` is when it exists and is not a regular file nor a link to one ("a FIFO
    (named pipe)", "a symbolic link to a folder", "a symbolic link loop"), read with ``stat``,
    never opened; None for a regular file and for a missing one (its reader says so)."""
    try:
        kind = mode_kind(os.stat(path).st_mode)
    except OSError as error:
        return "a symbolic link loop" if error.errno == errno.ELOOP else None
    if kind is not None and os.path.islink(path):
        return f"a symbolic link to {kind}"
    return kind


def refuse_special(path: str | Path, what: str, error: type[Exception], todo: str) -> None:
    """Raise ``error`` naming ``what`` and ``path`` when :func:`special` finds no regular file
    there, without opening it; ``todo`` says what to do instead."""
    kind = special(path)
    if kind is not None:
        raise error(f"{what} {path} is {kind}, not a regular file, and is not opened; {todo}")


def file_kind(path: str | Path) -> str:
    """A few words on what ``path`` holds: empty, a known format, text, or unknown binary (or
    what it is, unopened, when it is no regular file)."""
    kind = special(path)
    if kind is not None:
        return kind
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as error:
        return f"unreadable: {error.strerror or error}"
    if not head:
        return "an empty file"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "a binary file of an unknown format"
    return "a text file"


def is_torch_file(path: str | Path) -> bool:
    """Whether ``path`` starts as a file ``torch.save`` writes (a zip or a pickle)."""
    return file_kind(path).startswith(("a zip archive", "a Python pickle"))
