"""condseg's CSV tables and the one rule for a missing value in them, shared by every writer and
reader of a table (``per_image.csv``, a stage's ``metrics.csv``, ``cv_runs.csv``).

**Missing values**: a missing value (None, or a number that is not finite, which condseg never
stores) is written as an empty cell, and an empty cell reads as None; so does a cell holding a
number that is not finite (``nan``, ``inf``: written by a hand or another tool). A cell that is
no number at all, or a row with more or fewer cells than the header, is damage: one line naming
the file. An undefined metric (HD95 on an empty mask) is such a missing value, never a 0 or an
infinity.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from condseg.errors import first_line
from condseg.files import read_text

Score = float | None


def written_cell(value: Any) -> Any:
    """A value as a table stores it: a missing one (None, not finite) as an empty cell."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


def read_cell(cell: str) -> Score:
    """A stored cell as a value (the module's rule): empty or not finite is None; ValueError
    for a cell that is no number."""
    if not cell.strip():
        return None
    value = float(cell)
    return value if math.isfinite(value) else None


def table_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """A CSV table (``csv``'s dialect, as condseg has always written it) of ``columns``; keys of
    a row outside them are left out."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: written_cell(v) for k, v in row.items()} for row in rows)
    return out.getvalue()


def read_table(
    path: Path, key: str, error: type[Exception], todo: str
) -> list[dict[str, Any]]:
    """The rows of a CSV table condseg wrote: ``key`` (a text column, required) as written,
    every other column by the missing-value rule."""
    text = read_text(path, error, todo)
    try:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or key not in reader.fieldnames:
            raise ValueError(f"no {key!r} column")
        rows = []
        for row in reader:
            if None in row or None in row.values():
                raise ValueError(f"line {reader.line_num} has not one cell per column")
            rows.append({k: cell if k == key else read_cell(cell) for k, cell in row.items()})
    except (ValueError, csv.Error) as exc:  # a cell not a number, a torn row
        raise error(f"{path} is damaged ({first_line(exc)}); {todo}") from None
    return rows
