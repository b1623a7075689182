"""Training orchestration for any method: the stages' plans, the run folder, the data check,
the run header, one Lightning fit per stage (:mod:`condseg.training.stage`), and the final
evaluation (test split, else validation).

Run directory layout (names in :mod:`condseg.layout`)::

    RUN/config.yaml                     the resolved configuration (written at the start)
    RUN/train.log                       what the console printed (appended on resume)
    RUN/<stage>/checkpoints/last.ckpt   Lightning checkpoint of the last epoch (best.ckpt, by
                                        val mIoU, is removed when the stage finishes unless
                                        keep_best_checkpoint: its weights are the model file)
    RUN/<stage>/metrics.csv             one row per epoch (from csv/version_K/, one per attempt)
    RUN/<stage>/tensorboard/            TensorBoard logs, hyper-parameters, prediction grids
    RUN/<stage>/curves.png              loss and validation curves
    RUN/<stage>/model.safetensors       the best weights as a shareable model file
    RUN/<stage>/result.json             written last: marks the stage as finished
    RUN/evaluation/<split>/             per_image.csv and summary.json of the final model on the
                                        test split, or on the validation split (evaluation/val/)
                                        when the dataset has no test split
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from condseg.config import RunConfig
from condseg.errors import TrainingError
from condseg.evaluation.evaluate import evaluate, print_table
from condseg.files import amount
from condseg.layout import DatasetDir, EvalDir, RunDir
from condseg.models.model_file import load_model
from condseg.training.classes import with_dataset_classes
from condseg.training.logs import RunLog
from condseg.training.plan import plan_stages, stage_parts
from condseg.training.prune import kept_for_resuming
from condseg.training.recipe import print_header, resolve_precision
from condseg.training.resources import check_resources, check_shares
from condseg.training.results import StageResult, TrainResult
from condseg.training.stage import check_extendable, run_stage
from condseg.training.start import (
    check_batches,
    check_data,
    held,
    is_main_process,
    prepare_run_dir,
    resolved_paths,
)


def train(
    config: RunConfig,
    data_root: str | Path | None = None,
    out_dir: str | Path = "runs/condseg",
    stage: str | int = "all",
    resume: bool = False,
    console: Console | None = None,
) -> TrainResult:
    """Train the stages of ``config`` into the run dir ``out_dir``: "all" (its
    ``train_stages``, default every stage of the method) or one stage by name or 1-based number.

    A non-empty ``out_dir`` is only used with ``resume=True``: finished stages are skipped, an
    unfinished one continues from its ``last.ckpt``. With ``stage="all"`` the final model is
    evaluated on the test split, or on the validation split when the dataset has none. What
    ``console`` prints is also written to ``RUN/train.log``.
    """
    console = console or Console(soft_wrap=True)
    with RunLog(console) as log:
        return _train(config, data_root, out_dir, stage, resume, console, log)


def _train(
    config: RunConfig, data_root: str | Path | None, out_dir: str | Path, stage: str | int,
    resume: bool, console: Console, log: RunLog,
) -> TrainResult:
    root = Path(data_root) if data_root is not None else config.data.root
    if root is None:
        raise TrainingError("no dataset given: pass the data root (--data DIR) or set data.root")
    config = resolve_precision(resolved_paths(config, root))
    config = with_dataset_classes(config, config.data.root)  # K into model.options.num_classes
    stages = select_stages(config, stage)
    # Built and checked before the run directory exists: a refused start leaves none.
    processes = check_resources(config)
    plans = plan_stages(config, stages)
    parts = {name: stage_parts(plan, config) for name, plan in plans.items()}
    run = RunDir(Path(out_dir))
    with held(run, stage):
        if is_main_process():
            sizes = check_data(config.data.root, config, console)
            check_shares(config, processes, sizes)
            check_batches(config, plans.values(), processes, sizes)
            if resume:  # a refused resume is logged in the run it concerns
                log.attach(run.log)
                for name, plan in plans.items():
                    finished = StageResult.read(run.stage(name))
                    if finished is not None and finished.extended_by(plan.cfg):
                        check_extendable(name, run.stage(name))
            prepare_run_dir(run, config, resume)
            if not resume:
                log.attach(run.log)
            print_header(config, plans.values(), console)
        result = TrainResult(run.path)
        trained = False
        for name, plan in plans.items():
            finished = StageResult.read(run.stage(name))
            if finished is not None and not finished.extended_by(plan.cfg):
                result.record(name, finished)
                if is_main_process():
                    console.print(f"{name} already finished: {result.model_files[name]}")
                continue
            result.record(name, run_stage(parts[name], config, result, resume, console,
                                          log.log))
            trained = True
        if stage == "all":
            result.evaluation_dir = _evaluate_final(config, result, console, again=trained)
        if trained and is_main_process():
            _say_what_is_kept(run, console)
    return result


def _say_what_is_kept(run: RunDir, console: Console) -> None:
    """Name the checkpoints a finished run keeps only to be extended, and how to remove them."""
    kept = kept_for_resuming(run)
    if kept:
        names = ", ".join(str(path.relative_to(run.path)) for path in kept)
        console.print(f"kept to extend this run with more epochs: {names} "
                      f"({amount(sum(p.stat().st_size for p in kept))}, with the optimiser "
                      f"state); `condseg prune {run.path}` removes them, keeping the model files",
                      highlight=False)


def select_stages(config: RunConfig, stage: str | int) -> list[str]:
    """The stages ``train`` runs for ``stage``: "all" (the config's train_stages) or one stage
    by name or 1-based number."""
    names = list(config.stages)
    if stage == "all":
        return config.stages_to_train()
    if str(stage) in config.stages:
        return [str(stage)]
    if str(stage).isdecimal() and 1 <= int(stage) <= len(names):
        return [names[int(stage) - 1]]
    raise TrainingError(f"stage must be 'all', a stage name or number of method "
                        f"{config.method!r} ({', '.join(names)}); got {stage!r}")


def _evaluate_final(
    config: RunConfig, result: TrainResult, console: Console, again: bool
) -> Path | None:
    """The final model on the test split, or on the validation split when the dataset has no
    test split (network resolution, the paper's protocol; float32), written to
    RUN/evaluation/<test split>/ or RUN/evaluation/val/ — where ``condseg compare RUN`` looks — and
    printed. An existing evaluation is kept unless a stage was trained in this call
    (``again``)."""
    data = config.data
    if not result.model_files:
        return None
    has_test = DatasetDir(data.root).has_split(data.test_split)
    split, folder = (data.test_split,) * 2 if has_test else (data.val_split, "val")
    out: EvalDir = RunDir(result.run_dir).evaluation(folder)
    if is_main_process() and (again or not out.is_complete()):
        evaluation = evaluate(load_model(result.model_file), data.root, split=split,
                              out_dir=out.path, batch_size=data.batch_size, overwrite=True,
                              workers=data.num_workers, max_pixels=data.max_pixels,
                              console=console)
        print_table(evaluation, console)
        what = "test-split" if has_test else (
            f"validation-split (no {DatasetDir(data.root).split(data.test_split).name}: the "
            "validation split, which selected the model)")
        console.print(f"{what} evaluation of {result.model_file}: {out.path}", highlight=False)
    return out.path
