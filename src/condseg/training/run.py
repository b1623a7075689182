"""Training orchestration for any method: run directory, data check, run header, one Lightning
fit per stage of the recipe, export, and the final evaluation (test split, else validation).

Run directory layout::

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

import fnmatch
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from torch.utils.data import DataLoader

from condseg.config import RunConfig, StageConfig, load_config
from condseg.data.check import check_dataset
from condseg.data.dataset import SegmentationDataset
from condseg.data.transforms import VIEWS, geometric_augmentation
from condseg.epoch_log import write_epoch_log
from condseg.errors import CondsegError, first_line
from condseg.evaluation.evaluate import evaluate, print_table
from condseg.interrupt import Interrupted
from condseg.losses.base import Loss, create_loss
from condseg.models.base import SegmentationModel, check_input_size, use_plain_kernels
from condseg.models.model_file import load_model, read_header, save_model
from condseg.models.registry import create_model
from condseg.outputs import claim, entries
from condseg.training.checkpoints import (
    PREVIOUS_SUFFIX,
    AtomicCheckpointIO,
    RunCheckpoint,
    resume_point,
)
from condseg.training.hooks import BatchHook, as_trained, create_batch_hook
from condseg.training.logs import RunLog, TensorBoardExtras, flat_config
from condseg.training.module import NonFiniteLossError, SegmentationModule
from condseg.training.progress import ProgressBar, progress_callbacks
from condseg.training.recipe import print_header, resolve_precision, stage_model
from condseg.training.resources import ParentWatch, check_resources, check_shares
from condseg.viz import plot_curves

#: Settings a resumed run may change: they extend or observe the experiment, not redefine it.
RESUMABLE_CHANGES = (
    "stages.*.max_epochs", "stages.*.early_stop_patience", "train_stages", "data.num_workers",
    "progress_bar", "log_every_n_steps", "accelerator", "devices", "strategy", "num_nodes",
    "checkpoint_every_n_steps", "checkpoint_every_minutes", "keep_best_checkpoint",
    "log_images_every_n_epochs",
)


class TrainingError(CondsegError):
    """Training cannot start or continue; the message says why and what to do."""


@dataclass
class TrainResult:
    run_dir: Path
    model_files: dict[str, Path] = field(default_factory=dict)  # stage name -> model file
    best_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluation_dir: Path | None = None  # the final model's evaluation (test split, else val)

    @property
    def model_file(self) -> Path:
        """The model file of the last stage trained (the final model of the run)."""
        return list(self.model_files.values())[-1]


def _is_main_process() -> bool:
    """False in the DDP worker processes, which re-run the caller's script and must not
    re-check or re-write the run directory."""
    return rank_zero_only.rank == 0


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
    config = resolve_precision(_resolved_paths(config, root))
    stages = select_stages(config, stage)
    # Built and checked before the run directory exists: a refused start leaves none.
    processes = check_resources(config)
    parts = {name: _stage_parts(config, name) for name in stages}
    run_dir = Path(out_dir)
    with _held(run_dir, stage):
        if _is_main_process():
            check_shares(config, processes, _check_data(config.data.root, config, console))
            if resume:  # a refused resume is logged in the run it concerns
                log.attach(run_dir)
            _prepare_run_dir(run_dir, config, resume)
            if not resume:
                log.attach(run_dir)
            print_header(config, stages, console)
        result = TrainResult(run_dir)
        trained = False
        for name in stages:
            done = run_dir / name / "result.json"
            summary = json.loads(done.read_text()) if done.is_file() else None
            if summary is not None and not _extended(summary, config.stages[name]):
                _record(result, name, summary)
                if _is_main_process():
                    console.print(f"{name} already finished: {result.model_files[name]}")
                continue
            _record(result, name, _run_stage(name, parts[name], config, run_dir, result, resume,
                                             console, log.log))
            trained = True
        if stage == "all":
            result.evaluation_dir = _evaluate_final(config, result, console, again=trained)
    return result


@contextmanager
def _held(run_dir: Path, stage: str | int) -> Iterator[None]:
    """The run directory, locked for the run's life by the main process; a failed start
    removes only what this process wrote, and an interrupted run says how to continue."""
    if not _is_main_process():
        yield
        return
    with claim(run_dir, keep=_has_progress):
        try:
            yield
        except Interrupted as stop:
            if _has_progress(run_dir):
                chosen = "" if stage == "all" else f" --stage {stage}"
                stop.resume = f"condseg train --resume {run_dir}{chosen}"
            raise


def _resolved_paths(config: RunConfig, root: Path) -> RunConfig:
    """Absolute paths, so that a resumed run compares what the paths point to, not how they
    were typed."""
    model = config.model
    weights = model.weights.resolve() if model.weights is not None else None
    return config.model_copy(update={
        "data": config.data.model_copy(update={"root": root.resolve()}),
        "model": model.model_copy(update={"weights": weights}),
    })


def _extended(summary: dict, cfg: StageConfig) -> bool:
    """Whether a finished stage is to go on: it ran all its epochs (no early stop) and the
    resumed config allows more."""
    return not summary.get("stopped_early", True) and summary.get("max_epochs", 0) < cfg.max_epochs


def _has_progress(run_dir: Path) -> bool:
    """Whether any stage of the run wrote a checkpoint or finished (worth keeping)."""
    return any(run_dir.glob("*/checkpoints/*.ckpt")) or any(run_dir.glob("*/result.json"))


def select_stages(config: RunConfig, stage: str | int) -> list[str]:
    """The stages ``train`` runs for ``stage``: "all" (the config's train_stages) or one stage
    by name or 1-based number."""
    names = list(config.stages)
    if stage == "all":
        return config.stages_to_train()
    if str(stage) in config.stages:
        return [str(stage)]
    if str(stage).isdigit() and 1 <= int(stage) <= len(names):
        return [names[int(stage) - 1]]
    raise TrainingError(f"stage must be 'all', a stage name or number of method "
                        f"{config.method!r} ({', '.join(names)}); got {stage!r}")


def _record(result: TrainResult, name: str, summary: dict) -> None:
    """Note a finished stage; its model file is found inside this run folder (a run written
    before paths were recorded relative to it, then moved, still finds its own file)."""
    recorded = Path(summary["model_file"])
    inside = recorded if not recorded.is_absolute() else Path(name) / recorded.name
    result.model_files[name] = result.run_dir / inside
    result.best_metrics[name] = summary["metrics"]


def _stage_parts(config: RunConfig, name: str) -> tuple[Loss, BatchHook | None]:
    """The stage's loss and batch hook, built once; a stage whose network (laid out on the
    meta device: no memory, no download), input sizes, loss, views or hook cannot work is
    refused here, before the first stage takes its first step."""
    cfg = config.stages[name]
    model_name, options = stage_model(config, name)
    try:
        with torch.device("meta"):
            model = create_model(model_name, pretrained=False, **options)
    except Exception as error:  # options are the user's input: any failure to build is theirs
        key = "model.options" if cfg.model is None else f"stages.{name}.model.options" + "".join(
            f" and model.options.{k}" for k in cfg.model.inherit)
        raise TrainingError(f"stages.{name}: model {model_name!r} cannot be built from "
                            f"{key} ({first_line(error)})") from error
    try:
        loss = create_loss(cfg.loss.name, **cfg.loss.options)
    except CondsegError as error:  # a loss names its keys "loss.options.x": make them full
        full = re.sub(r"(?<![\w.])loss\.options\.", f"stages.{name}.loss.options.", str(error))
        raise type(error)(f"stages.{name}: {full}") from error
    for view in cfg.views:
        VIEWS.get(view)
    missing = [v for v in loss.views if v not in cfg.views]
    if missing:
        raise TrainingError(
            f"loss {cfg.loss.name!r} of stage {name} needs the views {missing}; add them with "
            f"stages.{name}.views=[{', '.join([*cfg.views, *missing])}]"
        )
    hook = None
    if cfg.batch_hook is not None:
        hook = create_batch_hook(cfg.batch_hook.name, **cfg.batch_hook.options)
    try:
        for size in (config.data.size, *(hook.sizes if hook is not None else ())):
            check_input_size(model, size, size)
    except CondsegError as error:
        raise TrainingError(f"stages.{name}: {error} (data.size / batch_hook sizes)") from error
    return loss, hook


def _prepare_run_dir(run_dir: Path, config: RunConfig, resume: bool) -> None:
    """Write the resolved config; never overwrite a run the user did not ask to continue."""
    config_file = run_dir / "config.yaml"
    if run_dir.is_dir() and entries(run_dir):
        if not resume:
            raise TrainingError(
                f"run directory {run_dir} is not empty; choose a new one, or continue the run in "
                f"it with --resume {run_dir} (resume=True; e.g. to run stage 2 after stage 1)"
            )
        if config_file.is_file():
            previous = load_config(config_file)
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
    config_file.write_text(config.to_yaml())


def _diff(a: object, b: object, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [prefix[:-1]] if a != b else []


def _check_data(root: Path, config: RunConfig, console: Console) -> dict[str, int]:
    """Refuse to train on a dataset with errors unless every faulty name is in ``data.skip``;
    returns the number of images of each split."""
    data = config.data
    splits = [data.train_split, data.val_split]
    if (root / f"{data.test_split}.txt").is_file():
        splits.append(data.test_split)  # checked now, not after hours of training
    report = check_dataset(root, splits=splits, max_pixels=data.max_pixels)
    blocking = [p for p in report.errors if p.name is None or p.name not in data.skip]
    if blocking:
        report.print(console)
        names = sorted({p.name for p in blocking if p.name is not None})
        todo = "fix them" if any(p.name is None for p in blocking) else (
            f"fix them, or exclude those items explicitly with data.skip=[{', '.join(names)}]")
        raise TrainingError(f"dataset {root} has {len(blocking)} error(s) (table above); {todo}")
    if data.skip:
        console.print(f"excluded from training and validation (data.skip): {', '.join(data.skip)}")
    return report.split_sizes


def _provided(path: str, parts: dict[str, str]) -> bool:
    """Whether the submodule ``path`` is (inside) one of the ``parts`` an earlier stage gives."""
    return any(path == part or path.startswith(f"{part}.") for part in parts)


def _build_model(
    name: str, config: RunConfig, result: TrainResult, console: Console
) -> SegmentationModel:
    """The stage's network, with the parts its ``init`` names taken from earlier stages' best
    models (parameters and BatchNorm buffers). ImageNet weights are not fetched for an encoder
    that an earlier stage provides."""
    cfg, run_model = config.stages[name], config.model
    model_name, options = stage_model(config, name)
    sources = {part: source for part, source in cfg.init.items() if source is not None}
    model = None
    if sources:  # ImageNet weights are fetched only when no earlier stage provides the encoder
        model = create_model(model_name, pretrained=False, **options)
        if run_model.pretrained and not _provided(model.encoder_path, sources):
            model = None
    if model is None:
        model = create_model(model_name, pretrained=run_model.pretrained,
                             weights=run_model.weights if run_model.pretrained else None,
                             **options)
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
        if _is_main_process():
            console.print(f"{name}: {part} loaded from {result.model_files[source]}")
    return model


def _normalization(config: RunConfig, model: SegmentationModel) -> tuple:
    """data.mean/std when set, else what the model's encoder was pretrained with."""
    if config.data.mean is not None:
        return config.data.mean, config.data.std
    return model.default_normalization()


def _loaders(
    cfg: StageConfig, config: RunConfig, mean: tuple, std: tuple
) -> tuple[DataLoader, DataLoader]:
    data = config.data
    aug = cfg.augmentation
    common = {"size": data.size, "mean": mean, "std": std, "exclude": data.skip,
              "max_pixels": data.max_pixels}
    train_set = SegmentationDataset(
        data.root, data.train_split,
        augment=geometric_augmentation(aug.rotate, aug.p_rotate, aug.p_flip, p_vflip=aug.p_vflip,
                                       scale=aug.scale, shear=aug.shear, shift=aug.shift),
        views={view: VIEWS.get(view)() for view in cfg.views}, **common,
    )
    val_set = SegmentationDataset(data.root, data.val_split, **common)
    loader = {"batch_size": data.batch_size, "num_workers": data.num_workers,
              "persistent_workers": data.num_workers > 0, "pin_memory": torch.cuda.is_available()}
    return (DataLoader(train_set, shuffle=True, drop_last=len(train_set) > data.batch_size,
                       **loader),
            DataLoader(val_set, shuffle=False, **loader))


def _run_stage(
    name: str, parts: tuple[Loss, BatchHook | None], config: RunConfig, run_dir: Path,
    result: TrainResult, resume: bool, console: Console, log: Console | None = None,
) -> dict:
    cfg, stage_dir = config.stages[name], run_dir / name
    L.seed_everything(config.seed + list(config.stages).index(name) + 1, workers=True,
                      verbose=False)
    model = _build_model(name, config, result, console)
    use_plain_kernels(model, config.plain_kernels)
    loss, hook = parts
    hook = _resolved_hook(name, hook, config, model, console)
    module = SegmentationModule(model, loss, cfg, stage=name, batch_hook=hook,
                                memory_format=config.memory_format)
    mean, std = _normalization(config, model)
    train_loader, val_loader = _loaders(cfg, config, mean, std)
    checkpoint = RunCheckpoint(
        dirpath=stage_dir / "checkpoints", filename="best", monitor="val/miou", mode="max",
        save_top_k=1, enable_version_counter=False,
    )
    callbacks = [checkpoint, *_last_checkpoints(config, stage_dir / "checkpoints"),
                 _EarlyStopping("val/miou", mode="max", patience=cfg.early_stop_patience),
                 LearningRateMonitor("epoch"), ParentWatch(),
                 TensorBoardExtras(flat_config(config.model_dump(mode="json")),
                                   config.log_images_every_n_epochs, mean, std),
                 *progress_callbacks(console, name, config.progress_bar,
                                     config.log_every_n_steps, log)]
    trainer = L.Trainer(
        max_epochs=cfg.max_epochs, accelerator=config.accelerator, devices=config.devices,
        strategy=config.strategy, num_nodes=config.num_nodes, precision=config.precision,
        callbacks=callbacks, limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=cfg.limit_val_batches, log_every_n_steps=config.log_every_n_steps,
        logger=[CSVLogger(stage_dir, name="csv",  # csv/version_K: one per attempt (resume)
                          flush_logs_every_n_steps=config.log_every_n_steps),
                TensorBoardLogger(stage_dir, name="", version="tensorboard",
                                  default_hp_metric=False)],
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=stage_dir, plugins=[AtomicCheckpointIO()],
    )
    last = stage_dir / "checkpoints" / "last.ckpt"
    start = None
    if resume:
        start, warning = resume_point(last.parent)
        if start is None and (stage_dir / "result.json").is_file():
            raise TrainingError(
                f"{name} has finished, but no readable checkpoint is left to extend it from "
                f"({last} is damaged); its model file {stage_dir / 'model.safetensors'} is kept. "
                "Restore the checkpoint, or extend it in a new run")
        if warning and _is_main_process():
            console.print(f"warning: {warning}", highlight=False, markup=False)
    try:
        trainer.fit(module, train_loader, val_loader, ckpt_path=start)
    except NonFiniteLossError as exc:
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no epoch had finished"
        raise TrainingError(
            f"{exc}. Training stopped; {kept}. Lower stages.{name}.optimizer.lr or use "
            f"precision=32, then continue with --resume {run_dir} (resume=True)"
        ) from exc
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
    # Paths inside the run are recorded relative to it: a moved or copied run stays whole.
    summary = {"model_file": f"{name}/model.safetensors",
               "best_checkpoint": f"{name}/checkpoints/{best.name}",
               "max_epochs": cfg.max_epochs,
               "stopped_early": trainer.current_epoch < cfg.max_epochs}
    if hook is not None and hook.record() is not None:
        summary["batch_hook"] = hook.record()
    if trainer.is_global_zero:
        summary["metrics"] = _export(module, best, as_trained(config, name, hook), stage_dir,
                                     (mean, std))
        for stale in last.parent.glob(f"*{PREVIOUS_SUFFIX}"):
            stale.unlink()  # the stage is finished: no kill left to survive
        if not config.keep_best_checkpoint and best != last:
            best.unlink(missing_ok=True)  # its weights are the model file; last.ckpt resumes
            summary["best_checkpoint"] = None
        (stage_dir / "result.json").write_text(json.dumps(summary, indent=2))
        metrics = summary["metrics"]
        console.print(f"{name}: best val mIoU {100 * metrics.get('miou', float('nan')):.2f}%, "
                      f"mDSC {100 * metrics.get('mdsc', float('nan')):.2f}% "
                      f"(epoch {metrics['epoch']}) -> "
                      f"{stage_dir / 'model.safetensors'}", highlight=False)
    trainer.strategy.barrier("condseg-export")
    return json.loads((stage_dir / "result.json").read_text())


def _resolved_hook(
    name: str, hook: BatchHook | None, config: RunConfig, model: SegmentationModel,
    console: Console,
) -> BatchHook | None:
    """The stage's hook at the run's input size, printed: the sizes a model trains at are
    never a silent default of the recipe."""
    if hook is None:
        return None
    try:
        hook = hook.resolved(config.data.size, model.input_divisor)
    except CondsegError as error:
        raise type(error)(f"stages.{name}: {error}") from error
    if _is_main_process() and hook.record() is not None:
        console.print(f"{name}: {hook} (batch_hook, data.size {config.data.size})",
                      highlight=False)
    return hook


def _export(
    module: SegmentationModule, best: Path, config: RunConfig, stage_dir: Path,
    normalization: tuple,
) -> dict:
    """Best weights -> model file; per-epoch log -> table and PNG. Returns the best val
    metrics. Without ``best`` (removed when the stage first finished, and no epoch since was
    better) the model file already holds the best weights."""
    model_file = stage_dir / "model.safetensors"
    if best.is_file():
        checkpoint = torch.load(best, map_location="cpu", weights_only=True)
        module.load_state_dict(checkpoint["state_dict"])
        # Epochs as users count them: the first epoch is 1.
        metrics = {**checkpoint.get("val_metrics", {}), "epoch": checkpoint["epoch"] + 1}
        mean, std = normalization
        save_model(model_file, module.model.cpu(), mean=mean, std=std,
                   input_size=config.data.size, metrics=metrics, config=config, overwrite=True)
    else:
        metrics = read_header(model_file)["metrics"]
    plot_curves(write_epoch_log(stage_dir), stage_dir / "curves.png")
    return metrics


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
    has_test = (data.root / f"{data.test_split}.txt").is_file()
    split, folder = (data.test_split,) * 2 if has_test else (data.val_split, "val")
    out = result.run_dir / "evaluation" / folder
    if _is_main_process() and (again or not (out / "summary.json").is_file()):
        evaluation = evaluate(load_model(result.model_file), data.root, split=split,
                              out_dir=out, batch_size=data.batch_size, overwrite=True,
                              workers=data.num_workers, max_pixels=data.max_pixels,
                              console=console)
        print_table(evaluation, console)
        what = "test-split" if has_test else (
            f"validation-split (no {data.test_split}.txt: the validation split, which "
            "selected the model)")
        console.print(f"{what} evaluation of {result.model_file}: {out}", highlight=False)
    return out


class _EarlyStopping(EarlyStopping):
    """Keeps the configured patience on resume (Lightning restores the checkpoint's), so that
    ``--resume RUN stages.X.early_stop_patience=N`` takes effect."""

    def load_state_dict(self, state_dict: dict) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience


def _last_checkpoints(config: RunConfig, folder: Path) -> list[Callback]:
    """``last.ckpt`` after every epoch's validation, and within epochs every N steps or M
    minutes, so that a kill loses one interval, not an epoch."""
    common = {"dirpath": folder, "filename": "last", "monitor": None, "save_top_k": 1,
              "enable_version_counter": False}
    within = (
        {"every_n_train_steps": config.checkpoint_every_n_steps}
        if config.checkpoint_every_n_steps is not None else
        {"train_time_interval": timedelta(minutes=config.checkpoint_every_minutes)}
        if config.checkpoint_every_minutes is not None else None
    )
    epochs = RunCheckpoint(every_n_epochs=1, **common)
    return [epochs] if within is None else [epochs, RunCheckpoint(**within, **common)]
