"""A study's runs: one per (method, seed or fold), each an ordinary training run in
``STUDY/runs/<method>/<run>/`` with its job folder beside it, and what their jobs recorded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import get_type_hints

from condseg.config import RunConfig, validated
from condseg.errors import StudyError
from condseg.files import read_text
from condseg.layout import DatasetDir, JobDir, RunDir, StudyDir
from condseg.study.protocol import MethodProtocol
from condseg.study.spec import StudySpec


@dataclass(frozen=True)
class Attempt:
    """One job's training of a run, as the job recorded it."""

    started: str
    wall_s: float
    peak_rss_mb: float
    exit_code: int
    host: str
    command: str
    job_id: str = ""  # the launcher's id of the job that made the attempt


@dataclass(frozen=True)
class StudyRun:
    """One training run of the study."""

    method: str  # the study's name for the method (its row)
    name: str  # seed<s>, fold<k> or fold<k>-seed<s>
    seed: int
    fold: int | None
    run: RunDir
    job: JobDir

    @property
    def label(self) -> str:
        return f"{self.method}/{self.name}"

    def is_finished(self, stages: list[str]) -> bool:
        """Every stage trained and the final model evaluated."""
        return (all(self.run.stage(s).is_finished() for s in stages)
                and bool(self.run.evaluations()))

    def attempts(self) -> list[Attempt]:
        """What the run's jobs recorded, oldest first (a killed job records nothing). A line
        of another shape than a job writes is refused naming the file and the line."""
        path = self.job.attempts
        todo = "delete that line or the file (only the record of the run's jobs is lost)"
        try:
            lines = read_text(path, StudyError, todo).splitlines()
        except OSError:
            return []
        found = []
        for number, line in enumerate(lines, 1):
            try:
                attempt = _attempt(line)
            except ValueError as error:
                raise StudyError(f"{path} is damaged: line {number} {error}; {todo}") from None
            if attempt is not None:
                found.append(attempt)
        return found

    def config(self, protocol: MethodProtocol, data: Path) -> RunConfig:
        """The method's configuration for this run: its seed, its fold's splits, the data;
        validated whole (a seed too large for the method's stages is refused here)."""
        raw = protocol.config().model_dump(mode="json")
        raw["seed"], raw["data"]["root"] = self.seed, str(data)
        if self.fold is not None:
            raw["data"]["train_split"], raw["data"]["val_split"] = DatasetDir.fold_splits(
                self.fold)
        return validated(RunConfig, raw, f"run {self.label}")


def _attempt(line: str) -> Attempt | None:
    """One line of ``attempts.jsonl``; a line a killed job left half-written is None, one of
    another shape a ValueError saying how."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        raise ValueError("is not a JSON object")
    types = get_type_hints(Attempt)
    for key, kind in types.items():
        value = record.get(key, "" if key == "job_id" else None)
        if not isinstance(value, (int, float) if kind is float else kind):
            raise ValueError(f"has no {kind.__name__} {key}")
    return Attempt(**{key: record.get(key, "") for key in types})


def plan_runs(spec: StudySpec, study: StudyDir) -> list[StudyRun]:
    """Every run of the study, method by method: one per seed, per fold, or per both."""
    folds: list[int | None] = list(range(spec.folds)) if spec.folds else [None]
    seeds = spec.seed_list
    runs = []
    for entry in spec.methods:
        for fold in folds:
            for seed in seeds:
                parts = ([f"fold{fold}"] if fold is not None else []) + (
                    [f"seed{seed}"] if fold is None or spec.seeds is not None else [])
                name = "-".join(parts)
                runs.append(StudyRun(entry.name, name, seed, fold, study.run(entry.name, name),
                                     study.job(entry.name, name)))
    return runs
