"""``condseg study``: every method on one protocol, trained as jobs, then compared."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from condseg.cli.options import int_list
from condseg.cli.render import console, user_errors


def study(
    data: Annotated[Path | None, typer.Option(
        help="Prepared dataset folder (same as data: in the study file).")] = None,
    methods: Annotated[str | None, typer.Option(
        help="Comma-separated methods (`condseg methods`); the first is the reference of the "
             "paired statistics, e.g. condseg,m2snet,chnet,unet.")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="Comma-separated seeds: one run per method and seed (default: one run, seed 0).")]
    = None,
    folds: Annotated[int | None, typer.Option(
        min=1, help="Train on the dataset's folds 0..K-1 (DATA/folds/<k>/train.txt, val.txt): "
                    "one run per fold.")]
    = None,
    budget: Annotated[str | None, typer.Option(
        help="epochs=N (every trained stage), total_epochs=N (a method's stages share N as its "
             "recipe shares its epochs), or equal compute: flops=N (training FLOPs per run, e.g. "
             "2e15) or time=DURATION (training time per run on this machine, e.g. 40m, 2h), "
             "turned into each method's epochs; default: each recipe's own epochs.")] = None,
    size: Annotated[int | None, typer.Option(
        min=1, help="Input size for every method (default: each recipe's).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="Batch size for every method (default: each recipe's).")]
    = None,
    precision: Annotated[str | None, typer.Option(
        help="Training precision for every method: auto, 32, bf16-mixed, 16-mixed.")] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="ImageNet weights: auto (where they can be had, else without, recorded), imagenet "
             "(required), none (encoders from scratch).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="A study file (YAML); the options above replace its values. Default: the study "
             "folder's own study.yaml when --out has one.")] = None,
    preset: Annotated[str | None, typer.Option(
        help="A packaged study, e.g. condseg-table1 (the paper's comparison, each method's "
             "published recipe).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Study folder (default studies/study-<date>-<time>); give it again to continue "
             "the study.")] = None,
    jobs: Annotated[int | None, typer.Option(
        min=1, help="Runs at once (local launcher); the CPU threads are split between them.")]
    = None,
    memory_gb: Annotated[float | None, typer.Option(
        help="A run's expected peak memory in GB, checked before each start (default: the "
             "largest measured in the study, else 4).")] = None,
    launcher: Annotated[str | None, typer.Option(
        help="local (this machine) or slurm (one SLURM job per run), both through submitit.")]
    = None,
    partition: Annotated[str | None, typer.Option(help="SLURM partition.")] = None,
    gpus: Annotated[int | None, typer.Option(min=0, help="SLURM GPUs per job.")] = None,
    cpus: Annotated[int | None, typer.Option(min=1, help="SLURM CPUs per job.")] = None,
    mem_gb: Annotated[float | None, typer.Option(help="SLURM memory per job in GB.")] = None,
    time: Annotated[int | None, typer.Option(
        min=1, help="SLURM time limit per job in minutes (a job that reaches it is requeued "
                    "and continues from its last checkpoint).")] = None,
    dry_run: Annotated[bool, typer.Option(
        help="Resolve what every method receives (fetching the ImageNet weights the runs "
             "would load), print it and the runs; train nothing.")] = False,
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key=value config overrides for every method, e.g. data.num_workers=0.")] = None,
) -> None:
    """Train several methods on one protocol (seeds or folds), then compare them as in the
    paper's Table 1: comparison/ and study.md in the study folder."""
    from condseg.errors import OptionError
    from condseg.study.run import continue_source, run_study
    from condseg.study.spec import read_study
    from condseg.training.logs import quiet_lightning

    quiet_lightning()
    with user_errors():
        if config is not None and preset is not None:
            raise OptionError("give --config FILE or --preset NAME, not both")
        source = config or preset or continue_source(out)
        changes = _given(
            data=str(data.resolve()) if data is not None else None,
            methods=[m.strip() for m in methods.split(",") if m.strip()] if methods else None,
            seeds=int_list(seeds, "--seeds") if seeds else None, folds=folds,
            budget=_budget(budget) if budget else None,
            protocol=_given(size=size, batch_size=batch_size, precision=precision,
                            pretrained=pretrained),
            launcher=_given(name=launcher, jobs=jobs, memory_gb=memory_gb, slurm=_given(
                partition=partition, gpus_per_node=gpus, cpus_per_task=cpus, mem_gb=mem_gb,
                timeout_min=time))) or {}
        if overrides:
            changes["overrides"] = list(overrides)
        spec = read_study(source, changes)
        folder = out or _default_study_dir()
        result = run_study(spec, folder, console=console, dry_run=dry_run)
    if result.failed:
        console.print(f"[red]{len(result.failed)} run(s) failed[/] "
                      f"({', '.join(o.run.label for o in result.failed)}); their logs are "
                      f"named above. Run `condseg study --out {folder}` again to retry them.",
                      highlight=False)
        raise typer.Exit(1)


def _given(**values: Any) -> dict[str, Any] | None:
    """The options given (None and empty sections left out), or None when none was."""
    given = {k: v for k, v in values.items() if v is not None}
    return given or None


def _budget(text: str) -> dict[str, int | float | str]:
    from condseg.errors import OptionError

    key, sep, value = text.partition("=")
    forms = "epochs=N, total_epochs=N, flops=N (e.g. 2e15) or time=DURATION (e.g. 40m, 2h)"
    if not sep or key not in ("epochs", "total_epochs", "flops", "time"):
        raise OptionError(f"--budget takes {forms}; got {text!r}")
    if key == "time":
        return {key: value}  # checked with the study's other values
    try:
        number = float(value) if key == "flops" else int(value)
    except ValueError:
        kind = "a number" if key == "flops" else "a whole number"
        raise OptionError(f"--budget {key} takes {kind}, got {value!r} ({forms})") from None
    return {key: number}


def _default_study_dir() -> Path:
    path = Path("studies") / f"study-{datetime.now():%Y%m%d-%H%M%S}"
    console.print(f"study folder (default --out): {path}", highlight=False)
    return path
