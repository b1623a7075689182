"""The study file: which methods, on which data, under which shared protocol, run how.

A study is written as YAML (``condseg study --config FILE``, or a packaged study preset such as
``condseg-table1``) and/or given as options (``--data --methods --seeds --folds --budget ...``),
which replace the file's values. It is validated like a run configuration: an unknown key is
named with the valid ones, a bad value is one line. Written into ``STUDY/study.yaml``, it is
what a later ``condseg study --out STUDY`` continues.
"""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from condseg.config import MAX_EPOCHS, MAX_SEED, RESAVE, read_yaml, validated
from condseg.errors import ConfigError, StudyError
from condseg.filekind import refuse_special
from condseg.files import read_text
from condseg.recipes import list_methods

#: Folder and row names: letters, digits, ``-``, ``_`` and ``.``, within NAME_MAX (255 bytes
#: on Linux's file systems), as each names the folders of its runs and jobs.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
#: Most folds of a study: each is a run of every method.
MAX_FOLDS = 1000
_PRESETS = ("configs", "studies")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class MethodEntry(_Strict):
    """One row of the study: a registered method, under a name of its own when the same method
    appears twice (``{name: condseg-pvt, method: condseg, overrides: [model.name=condseg-pvt]}``),
    with overrides for it alone."""

    name: str
    method: str | None = None  # None: ``name``
    overrides: list[str] = Field(default_factory=list)

    @property
    def method_name(self) -> str:
        return self.method or self.name

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("a method's name is a folder name: letters, digits, - _ ., at most "
                             "255 of them")
        return value

    @model_validator(mode="after")
    def _registered(self) -> MethodEntry:
        known = list_methods()
        if self.method_name not in known:
            close = difflib.get_close_matches(self.method_name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{self.method_name!r} is not a method{hint}; the methods: "
                             f"{', '.join(known)} (`condseg methods`)")
        return self


class Protocol(_Strict):
    """What every method receives alike; None keeps each recipe's own value."""

    size: int | None = Field(None, gt=0)  # data.size
    batch_size: int | None = Field(None, gt=0)  # data.batch_size
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] | None = None
    # ImageNet weights (encoders, LossNet's VGG): "imagenet" requires them, "none" trains every
    # method without them, "auto" uses them where they can be had and records where not.
    pretrained: Literal["auto", "imagenet", "none"] = "auto"

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value


class Budget(_Strict):
    """How long each method trains. By epochs: every trained stage ``epochs`` epochs, or
    ``total_epochs`` shared by a method's stages in proportion to its recipe's. By compute (each
    run of a method gets the same): ``flops`` training FLOPs, or ``time`` of training on this
    machine (``40m``, ``2h``, ``1h30m``, ``90s``), each turned into the epochs that fill it, shared
    by a method's stages as its recipe shares its epochs. Neither: the recipe's own epochs."""

    epochs: int | None = Field(None, gt=0, le=MAX_EPOCHS)
    total_epochs: int | None = Field(None, gt=0, le=MAX_EPOCHS)
    flops: float | None = Field(None, gt=0)
    time: str | None = None

    @field_validator("time", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):  # YAML reads 1:30 as 90
            raise ValueError(f"budget time {value!r}: write it as text with its unit, e.g. "
                             "'40m', '2h', '1h30m' or '90s'")
        if value is not None:
            duration_seconds(value)  # refused here, once, with the forms it takes
        return value

    @model_validator(mode="after")
    def _one_rule(self) -> Budget:
        given = [k for k in ("epochs", "total_epochs", "flops", "time")
                 if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one budget, not both {' and '.join(given)}")
        return self

    @property
    def compute(self) -> str | None:
        """``flops`` or ``time`` for a compute budget, else None."""
        return "flops" if self.flops is not None else "time" if self.time is not None else None

    @property
    def seconds(self) -> float | None:
        return duration_seconds(self.time) if self.time is not None else None

    def describe(self) -> str:
        if self.epochs is not None:
            return f"{self.epochs} epochs per stage"
        if self.total_epochs is not None:
            return f"{self.total_epochs} epochs per method, shared by its stages as its recipe"
        if self.flops is not None:
            return (f"{self.flops:.3g} training FLOPs per run of each method, shared by its "
                    "stages as its recipe")
        if self.time is not None:
            return (f"{self.time} of training per run of each method (calibrated here), shared "
                    "by its stages as its recipe")
        return "each recipe's own epochs"


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")
_SECONDS = re.compile(r"^\d+(?:\.\d+)?$")


def duration_seconds(text: str) -> float:
    """Seconds of a duration written ``2h``, ``40m``, ``1h30m``, ``90s`` or ``90`` (a bare
    number alone is seconds; after a unit, every part has its own)."""
    text = text.strip()
    match = _DURATION.match(f"{text}s" if _SECONDS.match(text) else text)
    if not text or match is None or not any(match.groups()):
        raise ValueError(f"budget time {text!r} is no duration; write it as 40m, 2h, 1h30m "
                         "or 90s")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"budget time {text!r} is no time at all; give a positive duration")
    return total


class SlurmOptions(_Strict):
    """What each SLURM job asks for (submitit's slurm_* parameters)."""

    partition: str | None = None
    gpus_per_node: int = Field(1, ge=0)
    cpus_per_task: int = Field(8, gt=0)
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: int = Field(24 * 60, gt=0)
    # Further sbatch options as submitit takes them, e.g. {account: lab, qos: high}.
    additional: dict[str, str | int] = Field(default_factory=dict)


class Launcher(_Strict):
    """How the runs are started: here (``local``, ``jobs`` at once, the CPU threads split
    between them) or as SLURM jobs; both through submitit."""

    name: Literal["local", "slurm"] = "local"
    jobs: int = Field(1, gt=0)
    # A run's expected peak memory, checked before each start; None: the largest peak measured
    # in this study (of the same method first), else DEFAULT_MEMORY_GB.
    memory_gb: float | None = Field(None, gt=0)
    slurm: SlurmOptions = Field(default_factory=SlurmOptions)


class StudySpec(_Strict):
    """A study: methods x (seeds or folds) runs on one dataset under one protocol."""

    description: str = ""
    data: Path | None = None  # a prepared dataset (relative to the study file)
    methods: list[MethodEntry] = Field(min_length=1)  # the first is the statistics' reference
    # None: one run, seed 0; each run's own seeds (seed + k for stage k) are checked with it
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] | None = Field(None, min_length=1)
    folds: int | None = Field(None, gt=0, le=MAX_FOLDS)  # the dataset's folds 0..K-1
    protocol: Protocol = Field(default_factory=Protocol)
    budget: Budget = Field(default_factory=Budget)
    overrides: list[str] = Field(default_factory=list)  # key=value for every method
    launcher: Launcher = Field(default_factory=Launcher)

    @field_validator("methods", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        """A method may be given by its name alone."""
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _unique(self) -> StudySpec:
        names = [m.name for m in self.methods]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"methods {twice} appear twice; give each a name of its own "
                             "({name: NAME, method: METHOD, overrides: [...]})")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        return self

    @property
    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [0]

    def experiment(self) -> dict[str, Any]:
        """What defines the results (not how they are run): a study continued with other
        values of these is another study."""
        return self.model_dump(mode="json", exclude={"launcher", "description", "methods",
                                                     "seeds"})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def list_study_presets() -> list[str]:
    folder = resources.files("condseg").joinpath(*_PRESETS)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                  if p.name.endswith(".yaml"))


def read_study(source: str | Path | None, changes: dict[str, Any]) -> StudySpec:
    """The study file or packaged preset ``source`` (None: nothing but ``changes``) with the
    top-level keys of ``changes`` replacing its own (``protocol`` and ``launcher`` are merged
    key by key; a budget is one rule, so a given one replaces the file's)."""
    raw, where, base = _read(source) if source is not None else ({}, "options", Path.cwd())
    if isinstance(raw.get("data"), str):  # relative to the study file, like its extends
        raw["data"] = str((base / raw["data"]).resolve())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict) and key != "budget":
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    if "methods" not in raw:
        raise StudyError(f"{where}: no methods; give them with --methods a,b,c or methods: "
                         "[a, b, c]")
    try:
        return validated(StudySpec, raw, where)
    except ConfigError as error:
        text = str(error)
        raise StudyError(text if text.startswith(where) else f"{where}: {text}") from None


def _read(source: str | Path) -> tuple[dict[str, Any], str, Path]:
    path = Path(source)
    if path.suffix in (".yaml", ".yml"):  # else a preset's name
        refuse_special(path, "study file", StudyError, "give the YAML file itself")
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text, where, base = read_text(path, StudyError, RESAVE), str(path), path.parent
    else:
        resource = resources.files("condseg").joinpath(*_PRESETS, f"{path.name}.yaml")
        if not resource.is_file():
            raise StudyError(f"no study file or study preset named {str(source)!r}; the "
                             f"presets: {', '.join(list_study_presets())}")
        text, where, base = resource.read_text(), f"study preset {path.name}", Path.cwd()
    try:
        raw = read_yaml(text, where) or {}
    except ConfigError as error:
        raise StudyError(str(error)) from None
    if not isinstance(raw, dict):
        raise StudyError(f"{where}: expected a mapping of study keys, got {type(raw).__name__}")
    return raw, where, base
