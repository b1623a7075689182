"""Outputs written whole, with the permissions the user's umask gives; and read back whole.

Outputs are written into a temporary sibling and renamed into place, so that a kill never
leaves half a file. :mod:`tempfile` creates its files 0600 and folders 0700 (private by
design), and a rename keeps the mode: without these helpers a model file or a prepared dataset
would be unreadable to the user's group whatever their umask says. (Folders are staged by
:func:`condseg.outputs.staged`, whose plain ``mkdir`` already follows the umask.)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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



def read_text(path: Path, error: type[Exception], todo: str) -> str:
    """The UTF-8 text of a file condseg wrote (or a YAML file given to it); one that is not
    UTF-8 is ``error`` naming it and ``todo``, never a traceback of the decoder."""
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
