"""What a file is, from its first bytes: for the message when a file is given in the wrong
place (a PNG or a ``.pth`` where a model file goes), so that it says what was given instead of
a reader's own advice (torch suggests ``weights_only=False``, which would run the file's code).
"""

from __future__ import annotations

from pathlib import Path

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


def file_kind(path: str | Path) -> str:
    """A few words on what ``path`` holds: empty, a known format, text, or unknown binary."""
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
