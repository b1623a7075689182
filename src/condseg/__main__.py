"""``python -m condseg``: the same command line as ``condseg``."""

from condseg.cli import app

app(prog_name="condseg")
