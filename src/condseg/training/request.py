"""What a training command asks for, resolved: its configuration and its run folder.

``condseg train`` and ``condseg cv`` (and any script) start from a preset or file, the
command's shorthand options (``--method`` sets the key ``method``) and ``key=value`` overrides;
a run continued or a cross-validation given again reads its own ``config.yaml`` instead of the
default preset. A run started without a folder gets a new one, named after what it trains and
when.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from condseg.config import RunConfig, load_config
from condseg.errors import OptionError
from condseg.layout import RunDir
from condseg.training.run import select_stages

RUNS = Path("runs")
SHORTHAND = {"method": "method", "model": "model.name", "precision": "precision", "seed": "seed"}


def run_config(
    config: str | None,
    overrides: list[str],
    *,
    folder: Path | None = None,
    epochs: int | None = None,
    stage: str | int = "all",
    **options: object,
) -> RunConfig:
    """The preset or file ``config`` (default: ``folder``'s own config.yaml when it has one,
    else 'default') with the shorthand ``options`` (keys of :data:`SHORTHAND`; None: not given)
    and the overrides. ``epochs`` sets max_epochs of every stage that ``stage`` trains;
    ``key=value`` overrides still refine it."""
    if config is None:
        previous = RunDir(folder).config if folder is not None else None
        config = str(previous) if previous is not None and previous.is_file() else "default"
    shorthand = [f"{SHORTHAND[k]}={v}" for k, v in options.items() if v is not None]
    cfg = load_config(config, shorthand + overrides)  # key=value options refine a --model
    if epochs is None:
        return cfg
    scaled = [f"stages.{name}.max_epochs={epochs}" for name in select_stages(cfg, stage)]
    return load_config(config, shorthand + scaled + overrides)


def run_name(config: str | None, cfg: RunConfig) -> str:
    """The preset or config file's name, or the method's when it is the default preset."""
    stem = Path(config or "default").stem
    return cfg.method if stem == "default" else stem


def new_run_dir(name: str, root: Path = RUNS) -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>`` (not created): a run started without a folder never
    meets another run's folder (and its resume advice)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = root / f"{name}-{stamp}", 2
    while path.exists():  # started within the same second
        path, n = root / f"{name}-{stamp}-{n}", n + 1
    return path


def check_resume(resume: Path, out: Path | None) -> None:
    """Refuse a run folder to continue that is not one, or an ``out`` that names another."""
    if out is not None and out.resolve() != resume.resolve():
        raise OptionError(f"--resume {resume} and --out {out} name different run folders; "
                          "give only --resume RUN")
    if not RunDir(resume).is_run():
        raise OptionError(f"{resume} is not a run folder (no config.yaml); pass the --out "
                          "folder of the run to continue")
