"""Outputs written whole, beside their destination, with the permissions the user's umask
gives, and a failed write that names where it failed; and condseg's own records read back
whole or refused by name.

Outputs are written into a temporary sibling and renamed into place, so that a kill never
leaves half a file, and nothing is staged in ``$TMPDIR`` (a compute node's small ``/tmp`` must
not stop a run whose own disk has room). :mod:`tempfile` creates its files 0600 (private by
design), and a rename keeps the mode: without these helpers a model file or a prepared dataset
would be unreadable to the user's group whatever their umask says. (Folders are staged by
:func:`condseg.outputs.staged`, whose plain ``mkdir`` already follows the umask.)

A write that fails names the file and, for a full disk, its folder's free space: ``write()``
names no file, and libraries report a short write as an OSError without an errno (numpy:
"65536 requested and 47072 written").
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from condseg.errors import OutputError
from condseg.filekind import refuse_special
from condseg.outputs import ENVIRONMENT_ERRNOS

if TYPE_CHECKING:
    import numpy as np

#: A full disk or quota, or a short write (None: what a library reports without an errno).
FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, None})


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


def amount(size: float) -> str:
    """A number of bytes for a message, in MB or GB."""
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def free_space(folder: Path) -> str:
    """What the file system holding ``folder`` has left for this user, for a message."""
    try:
        return amount(shutil.disk_usage(folder).free)
    except OSError:
        return "an unknown amount of space"


def cannot_write(path: Path, error: OSError) -> OutputError:
    """The one-line error of a failed write into ``path`` (a file or a folder)."""
    try:
        inside = path.is_dir()
    except OSError:  # a name too long is refused by stat too
        inside = False
    folder = path if inside else path.parent
    what = f"{'into ' if inside else ''}{path} ({error.strerror or error})"
    if error.errno in FULL:
        return OutputError(f"cannot write {what}: {'it' if inside else folder} has "
                           f"{free_space(folder)} free; make room there, or write the output "
                           "elsewhere")
    return OutputError(f"cannot write {what}; {_ADVICE.get(error.errno, _WRITABLE)}")


_WRITABLE = "choose a writable output folder"
_ADVICE = {
    errno.ENAMETOOLONG: "the name is longer than this file system takes: shorten the name or "
                        "the output folder's path",
    errno.ELOOP: "a symbolic link on the way loops: fix the link or choose another output folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another output folder",
}


@contextmanager
def writing(path: Path, reads: bool = False) -> Iterator[None]:
    """Turn a failed write in the block into :func:`cannot_write` naming ``path``: an OSError
    about the machine (:data:`~condseg.outputs.ENVIRONMENT_ERRNOS`) or one without an errno.
    With ``reads`` (a block that also reads files, as a training does) only a full disk that
    names no file is turned; an error naming its file already says where. Any other OSError is
    a bug and passes through."""
    try:
        yield
    except OSError as error:
        if reads:
            turned = error.errno in FULL - {None} and error.filename is None
        else:
            turned = error.errno in ENVIRONMENT_ERRNOS or error.errno is None
        if turned:
            raise cannot_write(path, error) from error
        raise


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed over ``path`` with the mode a plain
    ``open()`` would give when the block succeeds, removed when it fails. A failed write is
    :func:`cannot_write` naming ``path``."""
    with writing(path):
        fd, name = tempfile.mkstemp(prefix=f".{_shortened(path.name)}.", suffix=".tmp",
                                    dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            tmp.chmod(0o666 & ~current_umask())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _shortened(name: str, limit: int = 200) -> str:
    """``name`` cut to ``limit`` bytes of UTF-8, so that the staged sibling (14 bytes longer)
    fits where ``name`` itself fits (255 bytes on most file systems)."""
    return name.encode("utf-8", "surrogateescape")[:limit].decode("utf-8", "ignore")


def write_bytes(path: Path, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` whole (see :func:`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole (see :func:`atomic_file`)."""
    return write_bytes(path, text.encode("utf-8"))


def write_image(path: Path, pixels: np.ndarray) -> Path:
    """Write a grey or BGR image (the format from the suffix): encoded by OpenCV but written
    here, since ``cv2.imwrite`` only returns False on a full disk."""
    import cv2

    encoded, data = cv2.imencode(path.suffix or ".png", pixels)
    if not encoded:
        raise ValueError(f"OpenCV cannot encode a {pixels.dtype} {pixels.shape} image as {path}")
    return write_bytes(path, data.tobytes())


def clear_staged(folder: Path) -> list[Path]:
    """Remove the temporary files a killed process left staged under ``folder`` (which this
    process holds): :func:`atomic_file`'s and safetensors' own (``.tmpXXXXXX``). Returns them."""
    stale = [p for p in folder.rglob(".*") if p.is_file() and _is_staged(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _is_staged(name: str) -> bool:
    """``.NAME.XXXXXXXX.tmp`` (mkstemp's eight random characters) or ``.tmpXXXXXX``."""
    if name.startswith(".tmp") and len(name) == 10 and name[4:].isalnum():
        return True
    stem = name.removesuffix(".tmp")
    return stem != name and stem.startswith(".") and len(stem.rpartition(".")[2]) == 8


def read_text(path: Path, error: type[Exception], todo: str) -> str:
    """The UTF-8 text of a file condseg wrote (or a YAML file given to it); one that is not
    UTF-8 is ``error`` naming it and ``todo``, never a traceback of the decoder; one that is
    no regular file (a FIFO would block the read) is refused unopened."""
    refuse_special(path, "the file", error, todo)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path} is damaged: not UTF-8 text (byte {exc.start:,}); {todo}") from None


def read_json(path: Path, expect: type, error: type[Exception], todo: str) -> Any:
    """The JSON value of ``expect``'s type (dict, list) that condseg wrote to ``path``. A
    damaged file (empty, truncated, not UTF-8, another type) is ``error`` naming it and
    ``todo``: a run or study folder outlives crashes, copies and editors."""
    text = read_text(path, error, todo)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        why = "empty" if not text.strip() else f"not JSON ({exc.msg} at line {exc.lineno})"
        raise error(f"{path} is damaged: {why}; {todo}") from None
    except RecursionError:
        raise error(f"{path} is damaged: nested too deeply; {todo}") from None
    if not isinstance(value, expect):
        raise error(f"{path} is damaged: it holds {_json_kind(value)} where condseg writes "
                    f"{_json_kind(expect())}; {todo}")
    return value


def _json_kind(value: Any) -> str:
    kinds = {dict: "a JSON object", list: "a JSON array", str: "a string", bool: "true/false"}
    return "null" if value is None else kinds.get(type(value), "a number")
