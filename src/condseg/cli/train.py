"""Training commands: train, cv, prune, and the lists of what can be trained (models, methods,
presets)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from condseg.cli.options import int_list
from condseg.cli.render import console, user_errors

TrainingPrecision = Annotated[str | None, typer.Option(
    help="Training precision (Lightning's, mixed or not): auto (bf16-mixed where the hardware "
         "runs bf16 natively, else 32), 32, bf16-mixed or 16-mixed (same as precision=...).")]


def _default_run_dir(name: str) -> Path:
    """A new run folder for a command given no --out, said before anything is written there."""
    from condseg.training.request import new_run_dir

    path = new_run_dir(name)
    console.print(f"run directory (default --out): {path}", highlight=False)
    return path


def models() -> None:
    """List the available model names, with the method stages that train each."""
    from condseg.models.registry import describe_models
    from condseg.training.plan import trained_by as stages_training

    trained_by = stages_training()
    for name, description in describe_models().items():
        stages = trained_by.get(name)
        suffix = f" (trained by {', '.join(stages)})" if stages else ""
        console.print(f"[bold]{name}[/]  {description}{suffix}", soft_wrap=True)


def methods() -> None:
    """List the training methods with their stages (model, loss, optimiser, schedule, epochs)."""
    from condseg.training.plan import method_rows

    for name, description, stages in method_rows():
        console.print(f"[bold]{name}[/]  {description}", soft_wrap=True)
        for line in stages:
            console.print(f"    {line}", highlight=False, soft_wrap=True)


def train(
    data: Annotated[Path | None, typer.Option(
        help="Dataset folder (canonical layout); optional when the config sets data.root.")]
    = None,
    config: Annotated[str | None, typer.Option(help=(
        "Preset name (see `condseg presets`) or YAML file. Default: the run's own config.yaml "
        "with --resume, else the 'default' preset."))] = None,
    method: Annotated[str | None, typer.Option(
        help="Method (see `condseg methods`; same as method=...).")] = None,
    model: Annotated[str | None, typer.Option(
        help="The run's model within the method, e.g. condseg-pvt (same as model.name=...).")]
    = None,
    stage: Annotated[str, typer.Option(
        help="'all' (the config's train_stages), or one stage by name or number.")] = "all",
    out: Annotated[Path | None, typer.Option(
        help="Run directory (default runs/<preset or method>-<date>-<time>).")] = None,
    resume: Annotated[Path | None, typer.Option(
        help="Continue the run in this folder, with its own config.yaml.")] = None,
    precision: TrainingPrecision = None,
    epochs: Annotated[int | None, typer.Option(
        min=1, help="max_epochs of every stage trained (all, or the one --stage names); "
                    "same as stages.NAME.max_epochs=N for each.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same as seed=...).")] = None,
    fold: Annotated[int | None, typer.Option(
        help="Train on fold K of a dataset prepared with folds (DATA/folds/K/train.txt, "
             "val.txt).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key=value config overrides, e.g. stages.stage2.optimizer.lr=3e-4.")] = None,
) -> None:
    """Train a method's stages (default: ConDSeg's two-stage recipe)."""
    from condseg.training import train as run_training
    from condseg.training.cv import check_folds, fold_overrides
    from condseg.training.logs import quiet_lightning
    from condseg.training.request import check_resume, run_config, run_name

    quiet_lightning()
    with user_errors():
        if resume is not None:
            check_resume(resume, out)
        extra = list(overrides or []) + (fold_overrides(fold) if fold is not None else [])
        cfg = run_config(config, extra, folder=resume, epochs=epochs, stage=stage,
                         method=method, model=model, precision=precision, seed=seed)
        root = data or cfg.data.root
        if fold is not None and root is not None:  # not "not a prepared dataset"
            check_folds(root, [fold])
        suffix = f"-fold{fold}" if fold is not None else ""
        run_dir = resume or out or _default_run_dir(run_name(config, cfg) + suffix)
        result = run_training(cfg, data, run_dir, stage=stage, resume=resume is not None)
    console.print(f"run directory: {result.run_dir}; model file: {result.model_file}",
                  highlight=False)


def cv(
    data: Annotated[Path | None, typer.Option(
        help="Dataset folder with folds (DATA/folds/K/train.txt, val.txt); optional when the "
             "config sets data.root.")] = None,
    config: Annotated[str | None, typer.Option(help=(
        "Preset name or YAML file. Default: the cross-validation's own config.yaml when --out "
        "has one, else the 'default' preset."))] = None,
    method: Annotated[str | None, typer.Option(help="Method (same as method=...).")] = None,
    model: Annotated[str | None, typer.Option(
        help="The run's model within the method (same as model.name=...).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Cross-validation folder (default runs/<preset or method>-cv-<date>-<time>); "
             "give it to continue or aggregate a cross-validation.")] = None,
    fold: Annotated[list[int] | None, typer.Option(
        help="Train only this fold (repeatable): one job's share. Without it every fold is "
             "trained (finished ones are reused), then aggregated and ensembled.")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="Comma-separated seeds, e.g. 0,1,2: one run per seed (and fold).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue unfinished runs.")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace the aggregate, the ensemble and its test evaluation.")] = False,
    precision: TrainingPrecision = None,
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key=value config overrides, e.g. stages.stage2.max_epochs=100.")] = None,
) -> None:
    """k-fold cross-validation (or multi-seed runs): per-run validation results, their mean ±
    std, and an ensemble model (mean probability) for evaluate and predict."""
    from condseg.training.cv import cross_validate
    from condseg.training.logs import quiet_lightning
    from condseg.training.request import run_config, run_name

    quiet_lightning()
    with user_errors():
        seed_list = int_list(seeds, "--seeds") if seeds else None
        cfg = run_config(config, list(overrides or []), folder=out, method=method, model=model,
                         precision=precision)
        cv_dir = out or _default_run_dir(f"{run_name(config, cfg)}-cv")
        result = cross_validate(cfg, data, cv_dir, folds=fold or None, seeds=seed_list,
                                resume=resume, overwrite=overwrite, console=console)
    if result.ensemble_file is not None:
        console.print(f"cross-validation folder: {result.cv_dir}; ensemble: "
                      f"{result.ensemble_file}", highlight=False)


def prune(
    folders: Annotated[list[Path], typer.Argument(
        help="Run, cross-validation or study folders (every run under them).")],
    dry_run: Annotated[bool, typer.Option(
        help="List what would be removed; remove nothing.")] = False,
) -> None:
    """Remove the checkpoints that finished stages keep only to be extended (last.ckpt, with
    the optimiser state). Model files, results, logs and evaluations stay; unfinished stages
    and runs in use are left alone."""
    from condseg.files import amount
    from condseg.training.prune import prune as remove

    with user_errors():
        report = remove(folders, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for path, size in report.removed:
        console.print(f"{verb} {path} ({amount(size)})", highlight=False, markup=False)
    for busy in report.busy:
        console.print(f"left alone: {busy} is in use by another condseg process",
                      highlight=False, markup=False)
    console.print(f"{verb} {len(report.removed)} checkpoint(s), {amount(report.freed)}; those "
                  "stages can no longer be extended with more epochs", highlight=False)


def presets() -> None:
    """List the packaged configuration presets with their method and stages."""
    from condseg.config import list_presets, load_config

    for name in list_presets():
        cfg = load_config(name)
        console.print(f"[bold]{name}[/]  {cfg.description} (method {cfg.method}, stages "
                      f"{', '.join(cfg.stages_to_train())})", highlight=False, soft_wrap=True)
