"""A study's runs: one per (method, seed or fold), each an ordinary training run in
``STUDY/runs/<method>/<run>/`` with its job folder beside it, and what their jobs recorded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from condseg.config import RunConfig, validated
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
        """What the run's jobs recorded, oldest first (a killed job records nothing)."""
        try:
            lines = self.job.attempts.read_text().splitlines()
        except OSError:
            return []
        return [attempt for line in lines if (attempt := _attempt(line)) is not None]

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
    """One line of ``attempts.jsonl``; a line a killed job left half-written is None."""
    try:
        record = json.loads(line)
        return Attempt(**{k: v for k, v in record.items() if k in Attempt.__dataclass_fields__})
    except (ValueError, TypeError):
        return None


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
