"""Progress of evaluation and prediction where users look: a live bar on a terminal, plain
lines in a log file or a cluster job (about every tenth of the work), nothing without a
console (library calls stay quiet)."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn


class WorkProgress:
    def __init__(self, console: Console | None, total: int, description: str) -> None:
        self.console, self.total, self.description = console, total, description
        self.done = 0
        self._bar: Progress | None = None
        self._every = max(1, total // 10)
        self._next = self._every
        self._start = time.perf_counter()

    def __enter__(self) -> WorkProgress:
        if self.console is not None and self.console.is_terminal:
            self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                                 MofNCompleteColumn(), TimeRemainingColumn(),
                                 console=self.console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)
        elif self.console is not None and (self.done >= self._next or self.done == self.total):
            self._next = self.done + self._every
            rate = self.done / max(time.perf_counter() - self._start, 1e-9)
            self.console.print(f"{self.description}: {self.done}/{self.total} images "
                               f"({rate:.2f} images/s)", highlight=False, markup=False,
                               soft_wrap=True)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
