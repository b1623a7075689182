"""Every path of a run folder, named once.

Training writes these folders, cross-validation nests them, evaluation fills ``evaluation/``,
``compare`` and ``study`` read them back. Each of them asks this module for a path instead of
spelling a file name, so the layout is written down here and nowhere else::

    RUN/                                RunDir
      config.yaml  train.log            the run's configuration, the console's copy
      <stage>/                          StageDir (one per stage of the method, in order)
        checkpoints/best.ckpt last.ckpt
        csv/version_K/metrics.csv       Lightning's raw log, one version per attempt
        tensorboard/
        metrics.csv  curves.png         one row per epoch; its figure
        model.safetensors  result.json  the stage's model file and what it recorded
      evaluation/<split>/               EvalDir
        summary.json  per_image.csv

    CV/                                 CVDir
      config.yaml  train.log  cv_runs.csv  cv_summary.json  ensemble.safetensors
      <run>/                            RunDir (fold<k>, seed<s> or fold<k>-seed<s>)
      evaluation/<test split>/          EvalDir of the ensemble

    STUDY/                              StudyDir
      study.yaml  protocol.json         the study as given; what each method receives
      study.log  study.md               the console's copy; the report
      runs/<method>/<run>/              RunDir (seed<s>, fold<k> or fold<k>-seed<s>)
      jobs/<method>/<run>/              JobDir: the run's starting config, its attempts, and
                                        the launcher's files (logs, submission)
      comparison/                       compare's tables and figures over every run

Only names live here; what a file holds belongs to its writer, and each is read and
written in one place: :mod:`condseg.records` (``metrics.csv``: :mod:`condseg.epoch_log`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"
RESULT = "result.json"
EVALUATION = "evaluation"


@dataclass(frozen=True)
class EvalDir:
    """One evaluation: per-image scores and their summary."""

    path: Path

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def per_image(self) -> Path:
        return self.path / "per_image.csv"

    def is_complete(self) -> bool:
        return self.summary.is_file()


@dataclass(frozen=True)
class StageDir:
    """One stage of a run: its checkpoints, logs, model file and result."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def model_file(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def result(self) -> Path:
        return self.path / RESULT

    @property
    def csv_logs(self) -> Path:
        """Lightning's CSV logger root (``csv/version_K`` per attempt)."""
        return self.path / "csv"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def is_finished(self) -> bool:
        return self.result.is_file()

    def has_progress(self) -> bool:
        """Whether the stage wrote a checkpoint or finished (worth keeping)."""
        return self.is_finished() or any(self.checkpoints.glob("*.ckpt"))

    def relative(self, path: Path) -> str:
        """``path`` as recorded in the run's files: relative to the run folder, so that a moved
        or copied run stays whole."""
        return Path(path).relative_to(self.path.parent).as_posix()


@dataclass(frozen=True)
class _Started:
    """A folder a training command started: its configuration and its console log."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def log(self) -> Path:
        return self.path / "train.log"


@dataclass(frozen=True)
class RunDir(_Started):
    """One training run: its configuration, log, stages and evaluations."""

    def stage(self, name: str) -> StageDir:
        return StageDir(self.path / name)

    def evaluation(self, split: str) -> EvalDir:
        return EvalDir(self.path / EVALUATION / split)

    def evaluations(self) -> list[EvalDir]:
        """The run's finished evaluations, by split name."""
        found = sorted((self.path / EVALUATION).glob("*/"))
        return [EvalDir(p) for p in found if EvalDir(p).is_complete()]

    def is_run(self) -> bool:
        return self.config.is_file()

    def has_progress(self) -> bool:
        """Whether any stage of the run wrote a checkpoint or finished (worth keeping)."""
        return self.path.is_dir() and any(
            StageDir(p).has_progress() for p in self.path.iterdir() if p.is_dir())

    @classmethod
    def of_evaluation(cls, path: Path) -> RunDir | None:
        """The run an evaluation folder ``RUN/evaluation/<split>`` belongs to, if any."""
        path = Path(path)
        run = cls(path.parent.parent)
        return run if path.parent.name == EVALUATION and run.is_run() else None


@dataclass(frozen=True)
class CVDir(_Started):
    """A cross-validation: its runs, their aggregate, the ensemble and its test evaluation."""

    @property
    def runs_table(self) -> Path:
        return self.path / "cv_runs.csv"

    @property
    def summary(self) -> Path:
        return self.path / "cv_summary.json"

    @property
    def ensemble(self) -> Path:
        return self.path / "ensemble.safetensors"

    def run(self, name: str) -> RunDir:
        return RunDir(self.path / name)

    def has_progress(self) -> bool:
        """Whether any run of the cross-validation wrote a checkpoint or finished."""
        return self.path.is_dir() and any(
            RunDir(p).has_progress() for p in self.path.iterdir() if p.is_dir())

    def evaluation(self, split: str) -> EvalDir:
        return EvalDir(self.path / EVALUATION / split)


@dataclass(frozen=True)
class DatasetDir:
    """A prepared dataset: ``images/``, ``masks/``, one ``<split>.txt`` per split, optional
    ``folds/<k>/{train,val}.txt``, the record of its split and what preparation did not
    convert, and (a dataset of several classes) the declaration of its classes."""

    path: Path

    @property
    def images(self) -> Path:
        return self.path / "images"

    @property
    def masks(self) -> Path:
        return self.path / "masks"

    @property
    def folds(self) -> Path:
        return self.path / "folds"

    @property
    def not_converted(self) -> Path:
        return self.path / "not_converted.tsv"

    @property
    def split_info(self) -> Path:
        """Where the split came from and what was converted (written by ``data prepare``)."""
        return self.path / "split_info.json"

    @property
    def labels(self) -> Path:
        """The classes and their values in the mask files (``condseg.data.labels``); none:
        a binary dataset."""
        return self.path / "labels.json"

    def split(self, name: str) -> Path:
        """The list of a split's names; ``name`` may be a path like ``folds/0/train``."""
        return self.path / f"{name}.txt"

    def has_split(self, name: str) -> bool:
        return self.split(name).is_file()

    @staticmethod
    def fold_splits(fold: int) -> tuple[str, str]:
        """The (train, val) split names of fold ``fold``."""
        return f"folds/{fold}/train", f"folds/{fold}/val"

    @staticmethod
    def every_fold(split: str) -> str:
        """``folds/<k>/<part>`` as ``folds/*/<part>``, the part of every fold at once (what a
        comparison pooling fold runs names its column); other splits as they are."""
        parts = split.split("/")
        if len(parts) == 3 and parts[0] == "folds" and parts[1].isdecimal():
            return f"folds/*/{parts[2]}"
        return split

    def fold_numbers(self) -> list[int]:
        """The folds with both lists, in order."""
        if not self.folds.is_dir():
            return []
        return sorted(int(p.name) for p in self.folds.iterdir()
                      if p.name.isdecimal() and all(self.split(s).is_file()
                                                  for s in self.fold_splits(int(p.name))))


@dataclass(frozen=True)
class JobDir:
    """The launcher's side of one study run: the configuration it starts from, one record per
    attempt (wall time, peak memory, exit status), and the launcher's own files."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def attempts(self) -> Path:
        return self.path / "attempts.jsonl"

    @property
    def launcher(self) -> Path:
        """submitit's folder: the job's stdout/stderr logs and its submission files."""
        return self.path / "submitit"


@dataclass(frozen=True)
class StudyDir:
    """A study: every (method, seed or fold) run, their jobs, the comparison and the report."""

    path: Path

    @property
    def spec(self) -> Path:
        return self.path / "study.yaml"

    @property
    def protocol(self) -> Path:
        return self.path / "protocol.json"

    @property
    def log(self) -> Path:
        return self.path / "study.log"

    @property
    def report(self) -> Path:
        return self.path / "study.md"

    @property
    def comparison(self) -> Path:
        return self.path / "comparison"

    def run(self, method: str, name: str) -> RunDir:
        return RunDir(self.path / "runs" / method / name)

    def job(self, method: str, name: str) -> JobDir:
        return JobDir(self.path / "jobs" / method / name)
