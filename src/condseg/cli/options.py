"""Options that commands of several modules share."""

from __future__ import annotations

from typing import Annotated

import typer

MaxPixels = Annotated[int | None, typer.Option(
    help="Refuse images of more pixels than this (default 50,000,000), read from the header.")]


def int_list(text: str, option: str) -> list[int]:
    """``0,1,2`` as integers; ``option`` names the flag in the error."""
    from condseg.errors import OptionError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise OptionError(f"{option} takes comma-separated integers, e.g. 0,1,2; got "
                          f"{text!r}") from error
