"""Ctrl-C (SIGINT) and SIGTERM as one exception that cleans up on its way out.

Python turns SIGINT into ``KeyboardInterrupt``, which Lightning catches during ``fit`` and turns
into ``sys.exit(1)``; SIGTERM kills the process outright, or, during ``fit``, makes Lightning
leave at the end of the batch with ``SystemExit`` (status 0). Inside :func:`interruptible` both
signals raise :class:`Interrupted` instead: Lightning lets it through (after its own
``on_exception`` hooks and teardown, and after killing its DDP children on SIGTERM), each
output folder on the way out keeps or removes what the command wrote
(:func:`condseg.outputs.claim`) and says so, and the command ends with status 130.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The command was stopped by a signal. ``done`` lists what happened to its outputs (kept,
    removed) and ``resume`` is the command that continues it, when there is one.

    A ``BaseException`` like ``KeyboardInterrupt``, so that ``except Exception`` never swallows
    it, but not a ``KeyboardInterrupt``, which Lightning would turn into ``sys.exit(1)``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.done: list[str] = []
        self.resume: str | None = None

    def summary(self) -> str:
        """One line: the signal, what happened to the outputs, and how to continue."""
        done = "; ".join(self.done) or "nothing was written"
        resume = f"; continue with: {self.resume}" if self.resume else ""
        return f"stopped by {self.args[0]}: {done}{resume}"


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` in this process; a
    second signal while the first is being handled is ignored (cleanup is short). Processes
    forked meanwhile (DataLoader workers) keep Python's own behaviour. Outside the main thread
    (where handlers cannot be set) the block runs unchanged."""
    owner, state = os.getpid(), {"stopping": False}

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:  # a forked worker: as if our handler were not there
            if signum == signal.SIGINT:
                signal.default_int_handler(signum, frame)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if state["stopping"]:
            return
        state["stopping"] = True
        raise Interrupted(signum)

    try:
        previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
