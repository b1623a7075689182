"""The ``condseg`` command: parses arguments, then calls the library (nothing else lives here).

One module per group of commands (``data``, ``train``, ``infer``, ``report``, ``study``);
``render`` holds the console and how a failure is shown, ``options`` the options several
modules share. The commands are registered here, in the order ``condseg --help`` lists them.

Library modules are imported inside each command so that ``condseg --help`` starts quickly.
Errors a user can fix (``condseg.errors.CondsegError``: bad data, a missing file, a wrong option)
are printed as one line and exit with status 2; anything else is a bug and keeps its traceback.
``predict`` exits 1 when some inputs could not be used.
"""

from __future__ import annotations

from typing import Annotated

import typer

from condseg.cli import data, infer, nnunet, report, study, train
from condseg.cli.render import console, user_errors

__all__ = ["app", "console", "main", "user_errors"]

app = typer.Typer(
    help="ConDSeg and related methods for 2-D medical image segmentation (binary or K classes).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
)
data_app = typer.Typer(help="Prepare, check and synthesise datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        from condseg import __version__

        console.print(f"condseg {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option(
        "--version", "-V", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """ConDSeg and related methods for 2-D medical image segmentation (binary or K classes)."""


app.command("models")(train.models)
app.command("methods")(train.methods)
data_app.command("prepare")(data.data_prepare)
data_app.command("check")(data.data_check)
data_app.command("synth")(data.data_synth)
app.command("train")(train.train)
app.command("cv")(train.cv)
app.command("prune")(train.prune)
app.command("presets")(train.presets)
app.command("evaluate")(infer.evaluate)
app.command("predict")(infer.predict)
app.command("export")(infer.export)
app.command("benchmark")(report.benchmark)
app.command("convert-official")(report.convert_official)
app.command("demo")(report.demo)
app.command("compare")(report.compare)
app.command("study")(study.study)
app.add_typer(nnunet.app, name="nnunet")
