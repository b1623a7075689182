"""``condseg prune``: the resume checkpoints of finished stages removed, on request.

A finished stage keeps its ``last.ckpt`` (the weights with the optimiser's state, several times
the model file) so that the run can be extended with more epochs; a study of many runs holds
gigabytes of them. Pruning removes, in every finished stage under the folders given (runs,
cross-validations, studies), ``last.ckpt`` and the checkpoint kept before it. The model files,
results, logs and a ``best.ckpt`` kept on purpose (``keep_best_checkpoint``) stay; unfinished
stages are never touched (they resume from their checkpoints), nor runs in use (locked).
A pruned stage can no longer be extended; everything else works as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from condseg.errors import InputNotFoundError, OutputBusyError
from condseg.layout import RESULT, RunDir, StageDir
from condseg.outputs import claim
from condseg.training.checkpoints import previous_of


@dataclass
class PruneReport:
    """What was (or, in a dry run, would be) removed, and the runs left alone as in use."""

    removed: list[tuple[Path, int]] = field(default_factory=list)  # file, bytes
    busy: list[str] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(size for _, size in self.removed)


def resume_checkpoints(stage: StageDir) -> list[Path]:
    """The checkpoints of ``stage`` that only resuming or extending it needs."""
    last = stage.last_checkpoint
    return [p for p in (last, previous_of(last)) if p.is_file()]


def kept_for_resuming(run: RunDir) -> list[Path]:
    """The resume checkpoints of the finished stages of ``run``: what pruning would remove."""
    return [path for stage in _finished_stages(run) for path in resume_checkpoints(stage)]


def prune(folders: list[Path], dry_run: bool = False) -> PruneReport:
    """Remove the resume checkpoints of the finished stages of every run under ``folders``."""
    report = PruneReport()
    for folder in folders:
        if not folder.is_dir():
            raise InputNotFoundError(f"{folder} is not a folder; give run, cross-validation "
                                     "or study folders")
    for run in _runs(folders):
        try:
            with claim(run.path):
                for path in kept_for_resuming(run):
                    report.removed.append((path, path.stat().st_size))
                    if not dry_run:
                        path.unlink()
        except OutputBusyError:
            report.busy.append(str(run.path))
    return report


def _runs(folders: list[Path]) -> Iterator[RunDir]:
    """Each run folder at or under ``folders`` once (a run's ``config.yaml`` beside a stage's
    ``result.json``)."""
    seen: set[Path] = set()
    for folder in folders:
        for result in sorted(folder.rglob(RESULT)):
            run = RunDir(result.parent.parent)
            if run.is_run() and run.path.resolve() not in seen:
                seen.add(run.path.resolve())
                yield run


def _finished_stages(run: RunDir) -> list[StageDir]:
    return [run.stage(p.parent.name) for p in sorted(run.path.glob(f"*/{RESULT}"))]
