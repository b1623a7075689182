"""One stage of a run: its network (with the parts taken from earlier stages), one Lightning fit
of the planned module on the stage's data, and the export of the best weights as its model
file, with the stage's result written last (it marks the stage as finished)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from rich.console import Console

from condseg.config import RunConfig
from condseg.epoch_log import write_epoch_log
from condseg.errors import NonFiniteLossError, TrainingError
from condseg.evaluation.names import display_name, percent
from condseg.files import writing
from condseg.layout import RunDir, StageDir
from condseg.models.base import SegmentationModel
from condseg.models.model_file import load_model, read_header, save_model
from condseg.models.registry import create_model
from condseg.training.checkpoints import PREVIOUS_SUFFIX, resume_point
from condseg.training.cost import flops_per_image
from condseg.training.datamodule import SegmentationDataModule
from condseg.training.hooks import as_trained
from condseg.training.module import SegmentationModule
from condseg.training.plan import StageParts, StagePlan
from condseg.training.results import StageResult, TrainResult
from condseg.training.start import is_main_process
from condseg.training.trainer import build_trainer
from condseg.viz import plot_curves


def run_stage(
    parts: StageParts, config: RunConfig, result: TrainResult, resume: bool, console: Console,
    log: Console | None = None,
) -> StageResult:
    """Train the planned stage into its folder of the run ``result`` is gathering (from its
    ``last.ckpt`` with ``resume``) and export it; every process returns the stage's result."""
    plan = parts.plan
    run = RunDir(result.run_dir)
    stage = run.stage(plan.name)
    L.seed_everything(plan.seed, workers=True, verbose=False)
    model = _build_model(plan, config, result, console)
    hook = parts.batch_hook
    if is_main_process() and hook is not None and hook.record() is not None:
        console.print(f"{plan.name}: {hook} (batch_hook, data.size {config.data.size})",
                      highlight=False)
    module = SegmentationModule.from_parts(model, parts)
    normalization = _normalization(config, model)
    data = SegmentationDataModule(plan, config.data, *normalization)
    trainer, best_checkpoint = build_trainer(
        plan, config, stage, normalization, console, log,
        flops_per_image=flops_per_image(parts, config.data.size))
    start = _resume_point(plan.name, stage, console) if resume else None
    last = stage.last_checkpoint
    try:
        with writing(stage.path, reads=True):  # Lightning's logs name no file on a full disk
            trainer.fit(module, datamodule=data, ckpt_path=start)
    except NonFiniteLossError as exc:
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no epoch had finished"
        raise TrainingError(
            f"{exc}. Training stopped; {kept}. Lower stages.{plan.name}.optimizer.lr or use "
            f"precision=32, then continue with --resume {run.path} (resume=True)"
        ) from exc
    best = Path(best_checkpoint.best_model_path) if best_checkpoint.best_model_path else last
    done = None
    if trainer.is_global_zero:
        done = _finish(module, best, parts, config, stage, normalization, trainer.current_epoch)
        metrics = done.metrics
        console.print(f"{plan.name}: best val {display_name('iou')} "
                      f"{percent(metrics.get('miou', float('nan')))}%, {display_name('dice')} "
                      f"{percent(metrics.get('mdsc', float('nan')))}% "
                      f"(epoch {metrics['epoch']}) -> {stage.model_file}", highlight=False)
    trainer.strategy.barrier("condseg-export")
    return done or StageResult.read(stage)  # the other processes read what the first wrote


def _resume_point(name: str, stage: StageDir, console: Console) -> str | None:
    """The checkpoint an unfinished stage continues from (None: from its start); a finished
    stage without one to extend it from is refused."""
    start, warning = resume_point(stage)
    if start is None and stage.is_finished():
        raise _not_extendable(name, stage)
    if warning and is_main_process():
        console.print(f"warning: {warning}", highlight=False, markup=False)
    return start


def check_extendable(name: str, stage: StageDir) -> None:
    """Refuse before the run is touched (its config.yaml rewritten with more epochs) to extend
    the finished stage ``name`` when no checkpoint is left to extend it from."""
    if resume_point(stage)[0] is None:
        raise _not_extendable(name, stage)


def _not_extendable(name: str, stage: StageDir) -> TrainingError:
    last = stage.last_checkpoint
    why = "is damaged" if last.is_file() else "was removed, by condseg prune or by hand"
    return TrainingError(
        f"{name} has finished, but no readable checkpoint is left to extend it from ({last} "
        f"{why}); its model file {stage.model_file} is kept. Restore the checkpoint, or extend "
        "it in a new run")


def _finish(
    module: SegmentationModule, best: Path, parts: StageParts, config: RunConfig,
    stage: StageDir, normalization: tuple, epochs_run: int,
) -> StageResult:
    """Export the stage, clear what a kill no longer needs to survive, and write its result."""
    plan, last = parts.plan, stage.last_checkpoint
    hook = parts.batch_hook
    metrics = _export(module, best, as_trained(config, plan.name, hook), stage, normalization,
                      parts.classes)
    for stale in stage.checkpoints.glob(f"*{PREVIOUS_SUFFIX}"):
        stale.unlink()  # the stage is finished: no kill left to survive
    kept: Path | None = best
    if not config.keep_best_checkpoint and best != last:
        best.unlink(missing_ok=True)  # its weights are the model file; last.ckpt resumes
        kept = None
    done = StageResult(
        model_file=stage.relative(stage.model_file),
        best_checkpoint=stage.relative(stage.checkpoints / kept.name) if kept else None,
        max_epochs=plan.max_epochs, stopped_early=epochs_run < plan.max_epochs,
        metrics=metrics, batch_hook=hook.record() if hook is not None else None)
    done.write(stage)
    return done


def _provided(path: str, parts: dict[str, str]) -> bool:
    """Whether the submodule ``path`` is (inside) one of the ``parts`` an earlier stage gives."""
    return any(path == part or path.startswith(f"{part}.") for part in parts)


def _build_model(
    plan: StagePlan, config: RunConfig, result: TrainResult, console: Console
) -> SegmentationModel:
    """The stage's network, with the parts its ``init`` names taken from earlier stages' best
    models (parameters and BatchNorm buffers). ImageNet weights are not fetched for an encoder
    that an earlier stage provides."""
    name, run_model, sources = plan.name, config.model, plan.init
    model = None
    if sources:  # ImageNet weights are fetched only when no earlier stage provides the encoder
        model = create_model(plan.model, pretrained=False, **plan.options)
        if run_model.pretrained and not _provided(model.encoder_path, sources):
            model = None
    if model is None:
        model = create_model(plan.model, pretrained=run_model.pretrained,
                             weights=run_model.weights if run_model.pretrained else None,
                             **plan.options)
    for part, source in sources.items():
        if source not in result.model_files:
            raise TrainingError(
                f"stage {name} takes its {part} from stage {source}, which has not finished in "
                f"this run directory; train {source} first (--stage all or --stage {source}), "
                f"or start it as built with stages.{name}.init.{part}=null"
            )
        try:
            donor = load_model(result.model_files[source]).get_submodule(part)
            model.get_submodule(part).load_state_dict(donor.state_dict())
        except (AttributeError, RuntimeError) as error:
            raise TrainingError(f"stage {name}: cannot take {part!r} from stage {source} "
                                f"({error}); fix stages.{name}.init") from error
        if is_main_process():
            console.print(f"{name}: {part} loaded from {result.model_files[source]}")
    return model


def _normalization(config: RunConfig, model: SegmentationModel) -> tuple:
    """data.mean/std when set, else what the model's encoder was pretrained with."""
    if config.data.mean is not None:
        return config.data.mean, config.data.std
    return model.default_normalization()


def _export(
    module: SegmentationModule, best: Path, config: RunConfig, stage: StageDir,
    normalization: tuple, classes: tuple[str, ...] | None,
) -> dict:
    """Best weights -> model file (with the class names of K >= 2 classes); per-epoch log ->
    table and PNG. Returns the best val metrics. Without ``best`` (removed when the stage first
    finished, and no epoch since was better) the model file already holds the best weights."""
    if best.is_file():
        checkpoint = torch.load(best, map_location="cpu", weights_only=True)
        module.load_state_dict(checkpoint["state_dict"])
        # Epochs as users count them: the first epoch is 1.
        metrics = {**checkpoint.get("val_metrics", {}), "epoch": checkpoint["epoch"] + 1}
        mean, std = normalization
        save_model(stage.model_file, module.model.cpu(), mean=mean, std=std,
                   input_size=config.data.size, metrics=metrics, config=config, overwrite=True,
                   classes=classes)
    else:
        metrics = read_header(stage.model_file)["metrics"]
    plot_curves(write_epoch_log(stage.path), stage.curves)
    return metrics
