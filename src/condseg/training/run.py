"""Two-stage training orchestration: run directory, data check, one Lightning fit per stage, export.

Run directory layout::

    RUN/config.yaml                   the resolved configuration (written at the start)
    RUN/stageN/checkpoints/{best,last}.ckpt   Lightning checkpoints (best by val mIoU)
    RUN/stageN/metrics.csv            all epochs (merged from csv/version_K/, one per attempt)
    RUN/stageN/tensorboard/           TensorBoard logs
    RUN/stageN/curves.png             loss and validation curves
    RUN/stageN/model.safetensors      the best weights as a shareable model file
    RUN/stageN/result.json            written last: marks the stage as finished
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from condseg.config import RunConfig, load_config
from condseg.data.check import check_dataset
from condseg.data.dataset import SegmentationDataset
from condseg.data.transforms import geometric_augmentation
from condseg.inference.model_file import load_model, save_model
from condseg.models.registry import create_model
from condseg.training.module import STAGE_MODULES, NonFiniteLossError
from condseg.viz import plot_curves

StageArg = Literal["both", "1", "2", 1, 2]


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""


@dataclass
class TrainResult:
    run_dir: Path
    model_files: dict[int, Path] = field(default_factory=dict)
    best_metrics: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def model_file(self) -> Path:
        """The model file of the last stage trained (the final model of the run)."""
        return self.model_files[max(self.model_files)]


class _ProgressBar(RichProgressBar):
    """Rich progress bar without Lightning's ``v_num`` (the logger version means nothing here)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def _is_main_process() -> bool:
    """False in the DDP worker processes, which re-run the caller's script and must not
    re-check or re-write the run directory."""
    return rank_zero_only.rank == 0


def train(
    config: RunConfig,
    data_root: str | Path | None = None,
    out_dir: str | Path = "runs/condseg",
    stage: StageArg = "both",
    resume: bool = False,
    console: Console | None = None,
) -> TrainResult:
    """Train the stages of ``config`` ("both" = ``config.stages``) into the run dir ``out_dir``.

    A non-empty ``out_dir`` is only used with ``resume=True``: finished stages are skipped, an
    unfinished one continues from its ``last.ckpt``.
    """
    console = console or Console()
    root = Path(data_root) if data_root is not None else config.data.root
    if root is None:
        raise TrainingError("no dataset given: pass the data root (--data DIR) or set data.root")
    config = config.model_copy(update={"data": config.data.model_copy(update={"root": root})})
    stages = list(config.stages) if stage == "both" else [int(stage)]
    if any(s not in (1, 2) for s in stages):
        raise TrainingError(f"stage must be 'both', 1 or 2, got {stage!r}")
    run_dir = Path(out_dir)
    if _is_main_process():
        _check_data(root, config, console)  # first: a refused dataset leaves no run directory
        _prepare_run_dir(run_dir, config, resume)
    result = TrainResult(run_dir)
    for n in stages:
        done = run_dir / f"stage{n}" / "result.json"
        if done.is_file():
            _record(result, n, json.loads(done.read_text()))
            if _is_main_process():
                console.print(f"stage {n} already finished: {result.model_files[n]}")
            continue
        _record(result, n, _run_stage(n, config, run_dir, result, resume, console))
    return result


def _record(result: TrainResult, n: int, summary: dict) -> None:
    result.model_files[n] = Path(summary["model_file"])
    result.best_metrics[n] = summary["metrics"]


def _prepare_run_dir(run_dir: Path, config: RunConfig, resume: bool) -> None:
    """Write the resolved config; never overwrite a run the user did not ask to continue."""
    config_file = run_dir / "config.yaml"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not resume:
            raise TrainingError(
                f"run directory {run_dir} is not empty; choose a new one, or pass resume=True "
                "(--resume) to continue the run in it (e.g. to run stage 2 after stage 1)"
            )
        if config_file.is_file():
            previous = load_config(config_file)
            changed = _diff(previous.model_dump(mode="json"), config.model_dump(mode="json"))
            if changed:
                raise TrainingError(
                    f"cannot resume {run_dir} with a different configuration (changed: "
                    f"{', '.join(changed)}); resume with its own config: --config {config_file}"
                )
            return
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file.write_text(config.to_yaml())


def _diff(a: object, b: object, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [prefix[:-1]] if a != b else []


def _check_data(root: Path, config: RunConfig, console: Console) -> None:
    """Refuse to train on a dataset with errors unless every faulty name is in ``data.skip``."""
    report = check_dataset(root, splits=[config.data.train_split, config.data.val_split])
    blocking = [p for p in report.errors if p.name is None or p.name not in config.data.skip]
    if blocking:
        report.print(console)
        names = sorted({p.name for p in blocking if p.name is not None})
        todo = "fix them" if any(p.name is None for p in blocking) else (
            f"fix them, or exclude those items explicitly with data.skip=[{', '.join(names)}]")
        raise TrainingError(f"dataset {root} has {len(blocking)} error(s) (table above); {todo}")
    if config.data.skip:
        console.print(f"excluded from training and validation (data.skip): "
                      f"{', '.join(config.data.skip)}")


def _build_model(n: int, config: RunConfig, result: TrainResult, console: Console) -> nn.Module:
    """Net_0 for stage 1 (same encoder as the full model); ConDSeg for stage 2, its encoder taken
    from the best stage-1 model (parameters and BatchNorm buffers) in the two-stage recipe."""
    m = config.model
    if n == 1:
        with torch.device("meta"):  # only to learn which encoder the full model uses
            encoder = create_model(m.name, **m.options).encoder.pretrained_cfg["architecture"]
        return create_model("condseg-net0", pretrained=m.pretrained, weights=m.weights,
                            encoder=encoder)
    if config.stage2.encoder_init == "pretrained":
        return create_model(m.name, pretrained=m.pretrained, weights=m.weights, **m.options)
    source = result.model_files.get(1)
    if source is None:
        raise TrainingError(
            "stage 2 starts from the stage-1 encoder, but stage 1 has not finished in this run "
            "directory; run stage 1 first (stage 'both' or 1), or set "
            "stage2.encoder_init=pretrained for the one-stage setting"
        )
    model = create_model(m.name, pretrained=False, **m.options)
    model.encoder.load_state_dict(load_model(source).encoder.state_dict())
    if _is_main_process():
        console.print(f"stage 2: encoder loaded from {source}")
    return model


def _loaders(n: int, config: RunConfig, divisor: int) -> tuple[DataLoader, DataLoader]:
    data, cfg = config.data, config.stage(n)
    if data.size % divisor:
        raise TrainingError(f"data.size={data.size} must be a multiple of {divisor} for this model")
    aug = cfg.augmentation
    common = {"size": data.size, "mean": data.mean, "std": data.std, "exclude": data.skip}
    train_set = SegmentationDataset(
        data.root, data.train_split,
        augment=geometric_augmentation(aug.rotate, aug.p_rotate, aug.p_flip),
        strong_view=n == 1 and config.stage1.consistency, **common,
    )
    val_set = SegmentationDataset(data.root, data.val_split, **common)
    loader = {"batch_size": data.batch_size, "num_workers": data.num_workers,
              "persistent_workers": data.num_workers > 0, "pin_memory": torch.cuda.is_available()}
    return (DataLoader(train_set, shuffle=True, drop_last=len(train_set) > data.batch_size,
                       **loader),
            DataLoader(val_set, shuffle=False, **loader))


def _run_stage(
    n: int, config: RunConfig, run_dir: Path, result: TrainResult, resume: bool, console: Console
) -> dict:
    cfg, stage_dir = config.stage(n), run_dir / f"stage{n}"
    L.seed_everything(config.seed + n, workers=True, verbose=False)
    model = _build_model(n, config, result, console)
    module = STAGE_MODULES[n](model, cfg)
    train_loader, val_loader = _loaders(n, config, model.input_divisor)
    checkpoint = ModelCheckpoint(
        dirpath=stage_dir / "checkpoints", filename="best", monitor="val/miou", mode="max",
        save_top_k=1, save_last=True, enable_version_counter=False,
    )
    callbacks = [checkpoint,
                 EarlyStopping("val/miou", mode="max", patience=cfg.early_stop_patience),
                 LearningRateMonitor("epoch")]
    if config.progress_bar:
        callbacks.append(_ProgressBar())
    trainer = L.Trainer(
        max_epochs=cfg.max_epochs, accelerator=config.accelerator, devices=config.devices,
        strategy=config.strategy, num_nodes=config.num_nodes, precision=config.precision,
        callbacks=callbacks, limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=cfg.limit_val_batches, log_every_n_steps=config.log_every_n_steps,
        logger=[CSVLogger(stage_dir, name="csv"),  # csv/version_K: one per attempt (resume)
                TensorBoardLogger(stage_dir, name="", version="tensorboard")],
        enable_progress_bar=config.progress_bar, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=stage_dir,
    )
    last = stage_dir / "checkpoints" / "last.ckpt"
    try:
        trainer.fit(module, train_loader, val_loader,
                    ckpt_path=last if resume and last.is_file() else None)
    except NonFiniteLossError as exc:
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no epoch had finished"
        raise TrainingError(
            f"{exc}. Training stopped; {kept}. Lower stage{n}.lr or use precision=32, then "
            "continue with resume=True (--resume)"
        ) from exc
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
    summary = {"model_file": str(stage_dir / "model.safetensors"), "best_checkpoint": str(best)}
    if trainer.is_global_zero:
        summary["metrics"] = _export(module, best, config, stage_dir)
        (stage_dir / "result.json").write_text(json.dumps(summary, indent=2))
        console.print(f"stage {n}: best val mIoU {summary['metrics'].get('miou', float('nan')):.4f}"
                      f", mDSC {summary['metrics'].get('mdsc', float('nan')):.4f} -> "
                      f"{summary['model_file']}")
    trainer.strategy.barrier("condseg-export")
    return json.loads((stage_dir / "result.json").read_text())


def _export(module: L.LightningModule, best: Path, config: RunConfig, stage_dir: Path) -> dict:
    """Best weights -> model file; loss/metric curves -> PNG. Returns the best val metrics."""
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    module.load_state_dict(checkpoint["state_dict"])
    metrics = {**checkpoint.get("val_metrics", {}), "epoch": checkpoint["epoch"]}
    save_model(stage_dir / "model.safetensors", module.model.cpu(), mean=config.data.mean,
               std=config.data.std, input_size=config.data.size, metrics=metrics, config=config,
               overwrite=True)
    plot_curves(_merge_csv_logs(stage_dir), stage_dir / "curves.png")
    return metrics


def _merge_csv_logs(stage_dir: Path) -> Path:
    """Concatenate the CSV logs of all attempts of a stage (a resumed run logs into a new
    version folder, since Lightning's CSV logger replaces an existing file) into one file."""
    rows: list[dict[str, str]] = []
    fields: dict[str, None] = {}
    versions = sorted((stage_dir / "csv").glob("version_*/metrics.csv"),
                      key=lambda p: int(p.parent.name.removeprefix("version_")))
    for path in versions:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields.update(dict.fromkeys(reader.fieldnames or ()))
            rows.extend(reader)
    merged = stage_dir / "metrics.csv"
    with merged.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return merged
