"""What every command shares: the console it prints to, and how a failure is shown (one
line and an exit status).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

console = Console(soft_wrap=True)  # whole lines: a path in a log file is never broken


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's errors about the user's input or machine (a full disk, a read-only
    folder: an OSError of :data:`~condseg.outputs.ENVIRONMENT_ERRNOS`) into one clear line and
    exit code 2, and an interruption (Ctrl-C, SIGTERM) into one line and exit code 130."""
    from rich.markup import escape

    from condseg.errors import CondsegError
    from condseg.interrupt import Interrupted, interruptible
    from condseg.outputs import ENVIRONMENT_ERRNOS, describe

    def fail(message: str, code: int) -> typer.Exit:
        console.print(message, highlight=False, soft_wrap=True)
        return typer.Exit(code)

    try:
        with interruptible():
            yield
    except CondsegError as error:
        raise fail(f"[bold red]error:[/] {escape(str(error))}", 2) from error
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRNOS:
            raise  # a bug (a file we expected is missing, ...): keep its traceback
        raise fail(f"[bold red]error:[/] {escape(describe(error))}", 2) from error
    except Interrupted as stop:
        raise fail(f"[bold red]interrupted:[/] {escape(stop.summary())}", 130) from None
