"""Split files: ``ROOT/<split>.txt`` lists a split's names (file stems, without extension),
one per line, written so that reading them back gives the same names."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from condseg.data.names import name_key, unlistable
from condseg.errors import DataError
from condseg.filekind import refuse_special
from condseg.files import write_text
from condseg.layout import DatasetDir


def read_split(root: str | Path, split: str) -> list[str]:
    """Names listed in ``root/<split>.txt``, in file order.

    Lines end at ``\\n`` only (CRLF accepted), so a name may hold any other character, a
    Unicode line separator (U+2028, U+0085) included. Every non-blank line is a name
    (surrounding whitespace and a UTF-8 BOM are ignored; there are no comments, so a name
    starting with ``#`` is kept), matched as :func:`~condseg.data.names.name_key` matches file
    names. Duplicates are kept: :func:`condseg.data.check.check_dataset` reports them instead of
    this function silently dropping them.
    """
    path = DatasetDir(Path(root)).split(split)
    refuse_special(path, "split file", DataError, f"write the {split} names into a text file")
    if not path.is_file():
        raise DataError(
            f"split file {path} not found: write the {split} names (without extension), "
            "one per line"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read split file {path} ({exc}); save it as UTF-8 text") from exc
    return split_names(text)


def split_names(text: str) -> list[str]:
    """The names of a split file's ``text`` (see :func:`read_split`)."""
    return [name for name in map(name_key, text.split("\n")) if name]


def write_split(path: str | Path, names: Iterable[str]) -> None:
    """Write a split file that :func:`read_split` reads back as ``names``; a name that cannot be
    listed (:func:`~condseg.data.names.unlistable`) is refused, never written."""
    names = list(names)
    for name in names:
        why = unlistable(name)
        if why is not None or name != name.strip():
            raise DataError(f"cannot list {name!r} in split file {path}: "
                            f"{why or 'its name has surrounding whitespace'}; rename the file")
    write_text(Path(path), "".join(f"{n}\n" for n in names))
