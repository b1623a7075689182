"""Before a run's first step: the run folder claimed, its configuration written (or, on resume,
compared with the one it was started with), and the dataset checked."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console

from condseg.config import RunConfig
from condseg.data.check import check_dataset
from condseg.data.labels import require_supported
from condseg.errors import TrainingError
from condseg.files import clear_staged
from condseg.interrupt import Interrupted
from condseg.layout import DatasetDir, RunDir
from condseg.outputs import claim, entries
from condseg.records import read_config, write_config
from condseg.training.plan import StagePlan

#: Settings a resumed run may change: they extend or observe the experiment, not redefine it.
RESUMABLE_CHANGES = (
    "stages.*.max_epochs", "stages.*.early_stop_patience", "train_stages", "data.num_workers",
    "progress_bar", "log_every_n_steps", "accelerator", "devices", "strategy", "num_nodes",
    "checkpoint_every_n_steps", "checkpoint_every_minutes", "keep_best_checkpoint",
    "log_images_every_n_epochs",
)


def is_main_process() -> bool:
    """False in the DDP worker processes, which re-run the caller's script and must not
    re-check or re-write the run directory."""
    return rank_zero_only.rank == 0


@contextmanager
def held(run: RunDir, stage: str | int) -> Iterator[None]:
    """The run directory, locked for the run's life by the main process; a failed start
    removes only what this process wrote, and an interrupted run says how to continue."""
    if not is_main_process():
        yield
        return
    with claim(run.path, keep=lambda path: RunDir(path).has_progress()):
        try:
            yield
        except Interrupted as stop:
            if run.has_progress():
                chosen = "" if stage == "all" else f" --stage {stage}"
                stop.resume = f"condseg train --resume {run.path}{chosen}"
            raise


def resolved_paths(config: RunConfig, root: Path) -> RunConfig:
    """Absolute paths, so that a resumed run compares what the paths point to, not how they
    were typed."""
    model = config.model
    weights = model.weights.resolve() if model.weights is not None else None
    return config.model_copy(update={
        "data": config.data.model_copy(update={"root": root.resolve()}),
        "model": model.model_copy(update={"weights": weights}),
    })


def prepare_run_dir(run: RunDir, config: RunConfig, resume: bool) -> None:
    """Write the resolved config; never overwrite a run the user did not ask to continue."""
    run_dir = run.path
    if run_dir.is_dir() and entries(run_dir):
        if not resume:
            raise TrainingError(
                f"run directory {run_dir} is not empty; choose a new one, or continue the run in "
                f"it with --resume {run_dir} (resume=True; e.g. to run stage 2 after stage 1)"
            )
        clear_staged(run_dir)  # what a killed process was writing: never finished
        if run.config.is_file():
            previous = read_config(run)
            changed = _diff(previous.model_dump(mode="json"), config.model_dump(mode="json"))
            refused = [key for key in changed
                       if not any(fnmatch.fnmatchcase(key, p) for p in RESUMABLE_CHANGES)]
            if refused:
                raise TrainingError(
                    f"cannot resume {run_dir} with a different experiment (changed: "
                    f"{', '.join(refused)}); resume with its own config (--resume {run_dir} "
                    f"without --config), or start a new run. A resumed run may change only "
                    f"{', '.join(RESUMABLE_CHANGES)}"
                )
            if not changed:
                return
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run, config)


def _diff(a: object, b: object, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [prefix[:-1]] if a != b else []


def check_data(root: Path, config: RunConfig, console: Console) -> dict[str, int]:
    """Refuse to train on a dataset with errors unless every faulty name is in ``data.skip``,
    or on one binary dataset with ignored pixels; returns the number of images of each
    split."""
    data = config.data
    splits = [data.train_split, data.val_split]
    if DatasetDir(root).has_split(data.test_split):
        splits.append(data.test_split)  # checked now, not after hours of training
    require_supported(root)
    report = check_dataset(root, splits=splits, max_pixels=data.max_pixels)
    blocking = [p for p in report.errors if p.name is None or p.name not in data.skip]
    if blocking:
        report.print(console)
        names = sorted({p.name for p in blocking if p.name is not None})
        todo = "fix them" if any(p.name is None for p in blocking) else (
            f"fix them, or exclude those items explicitly with data.skip=[{', '.join(names)}]")
        raise TrainingError(f"dataset {root} has {len(blocking)} error(s), each listed by "
                            f"`condseg data check {root}`; {todo}")
    if data.skip:
        console.print(f"excluded from training and validation (data.skip): {', '.join(data.skip)}")
    return report.split_sizes


def check_batches(
    config: RunConfig, plans: Iterable[StagePlan], processes: int, split_sizes: Mapping[str, int]
) -> None:
    """A share of the batches (``limit_*_batches`` below 1.0) must leave each stage at least one
    batch of training and of validation per process: Lightning refuses it only as that stage
    starts, after the earlier ones have trained."""
    data, total = config.data, max(1, processes * config.num_nodes)
    train = -(-split_sizes.get(data.train_split, 0) // total)  # a process's share, rounded up
    val = -(-split_sizes.get(data.val_split, 0) // total)
    batches = {"limit_train_batches": max(1, train // data.batch_size),  # the last one dropped
               "limit_val_batches": max(1, -(-val // data.batch_size))}
    for plan in plans:
        for key, count in batches.items():
            share = getattr(plan.cfg, key)
            if isinstance(share, float) and int(count * share) < 1:
                raise TrainingError(
                    f"stages.{plan.name}.{key} is {share:g}, which of the {count} batch(es) "
                    f"of each process is none; give a share of at least {1 / count:.3g}, or a "
                    "number of batches (an integer, such as 1)")
