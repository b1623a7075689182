"""Options that commands of several modules share."""

from __future__ import annotations

from typing import Annotated

import typer

MaxPixels = Annotated[int | None, typer.Option(
    help="Refuse images of more pixels than this (default 50,000,000), read from the header.")]
