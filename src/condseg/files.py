"""Outputs written whole, with the permissions the user's umask gives.

Outputs are written into a temporary sibling and renamed into place, so that a kill never
leaves half a file. :mod:`tempfile` creates its files 0600 and folders 0700 (private by
design), and a rename keeps the mode: without these helpers a model file or a prepared dataset
would be unreadable to the user's group whatever their umask says. (Folders are staged by
:func:`condseg.outputs.staged`, whose plain ``mkdir`` already follows the umask.)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (another thread may
    create files meanwhile), else set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed over ``path`` with the mode a plain
    ``open()`` would give when the block succeeds, removed when it fails."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

