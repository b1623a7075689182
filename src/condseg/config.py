"""Typed run configuration: a method's recipe, packaged YAML presets, ``extends:`` chains and
``a.b=value`` overrides.

A run names a ``method`` (``condseg methods``); the method's recipe — its model and its ordered
training ``stages`` — is the base every preset, file and override is merged onto, so any field
of any stage can be changed (``stages.stage2.optimizer.lr=3e-4``). The resolved config is written
into every run directory, so that a run can be repeated or resumed from that file alone.
"""

from __future__ import annotations

import difflib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from condseg.errors import ConfigError, first_line
from condseg.filekind import refuse_special
from condseg.files import read_text
from condseg.recipes import method_recipe

Triple = tuple[float, float, float]
Spread = Annotated[float, Field(gt=0)]  # a divisor: zero or less is no normalisation
M = TypeVar("M", bound=BaseModel)
#: Most values a YAML text may stand for once its aliases are expanded. An alias repeats a
#: node without repeating its text, so a few lines of nested aliases (a "billion laughs") can
#: stand for billions of values and exhaust the memory of whatever walks them; a real config
#: has a few hundred.
MAX_YAML_VALUES = 100_000
MAX_SEED = 2**32 - 1  # seeds are 32-bit unsigned (numpy, Lightning)
MAX_EPOCHS = 1_000_000  # of a stage; far beyond any training, well within every counter
MAX_CHECKPOINT_MINUTES = 7 * 24 * 60  # a week: timedelta and the clock stay exact
BatchLimit = Annotated[int | float, Field(gt=0)]  # a share (float, at most 1) or a count (int)
#: What to do with a YAML file that is not UTF-8 (a user's, or a run folder's own, damaged).
RESAVE = "save it as UTF-8 text"


class _Section(BaseModel):
    """Unknown keys are errors: a misspelt key must never silently fall back to a default; no
    number is infinite or NaN."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    """The run's model (the final network of the method)."""

    name: str = "condseg"
    options: dict[str, Any] = Field(default_factory=dict)  # passed to create_model
    pretrained: bool = True
    weights: Path | None = None  # local ImageNet weights file for the encoder (no network needed)


class StageModel(_Section):
    """A stage's own network, when it is not the run's model (ConDSeg's stage-1 Net_0)."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    # Options copied from the run's model (with its registered defaults), e.g. [encoder].
    inherit: list[str] = Field(default_factory=list)


class DataConfig(_Section):
    root: Path | None = None
    size: int = Field(256, gt=0)
    batch_size: int = Field(4, gt=0)
    num_workers: int = Field(2, ge=0)
    # None: the normalisation the model's encoder was pretrained with (timm's pretrained_cfg).
    mean: Triple | None = None
    std: tuple[Spread, Spread, Spread] | None = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"  # evaluated at the end of training when ROOT/<test_split>.txt exists
    skip: list[str] = Field(default_factory=list)  # names excluded after the integrity check
    # Images of more pixels are refused from their header (None: data.dataset.MAX_PIXELS).
    max_pixels: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _mean_and_std_together(self) -> DataConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("set both data.mean and data.std, or neither (the encoder's)")
        return self


class Augmentation(_Section):
    """Geometric augmentation: rotation by up to ±``rotate``° with probability ``p_rotate``
    and flips of each axis with ``p_flip``. Any of ``scale`` (a factor range), ``shear``
    (±degrees on each axis) or ``shift`` (± a fraction of each side) makes the rotation one
    affine transform with them, still with probability ``p_rotate``."""

    rotate: float = Field(90.0, ge=0)
    p_rotate: float = Field(0.5, ge=0, le=1)
    p_flip: float = Field(0.5, ge=0, le=1)  # horizontal flip, and vertical unless p_vflip is set
    p_vflip: float | None = Field(None, ge=0, le=1)  # None: p_flip
    scale: tuple[float, float] = (1.0, 1.0)
    shear: float = Field(0.0, ge=0, lt=90)
    shift: float = Field(0.0, ge=0, lt=1)

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError("scale must be a range [low, high] with 0 < low <= high")
        return value


class LossConfig(_Section):
    """A registered loss (``condseg methods`` lists them) and its options."""

    name: str = "bce-dice"
    options: dict[str, Any] = Field(default_factory=dict)


class OptimizerConfig(_Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0)
    encoder_lr: float | None = Field(None, gt=0)  # None: lr
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd
    nesterov: bool = False  # sgd
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9, 0.999)  # adam, adamw


class ScheduleConfig(_Section):
    """Learning-rate schedule, stepped per epoch (``docs/decisions.md`` gives the formulas)."""

    name: Literal["plateau", "poly", "cosine", "triangular", "constant"] = "plateau"
    warmup_epochs: int = Field(0, ge=0)  # linear warm-up before poly/cosine/constant
    patience: int = Field(30, ge=0)  # plateau
    factor: float = Field(0.1, gt=0, lt=1)  # plateau
    # plateau: a validation value the module logs every epoch
    monitor: Literal["val/loss", "val/miou", "val/mdsc", "val/recall", "val/precision"] = (
        "val/loss")
    power: float = Field(0.9, gt=0)  # poly
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # poly, cosine: the floor as a share of lr


class HookConfig(_Section):
    """A registered per-batch hook (e.g. ``multiscale``) and its options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class StageConfig(_Section):
    """One training stage: what is trained, on what, how, and for how long."""

    model: StageModel | None = None  # None: the run's model
    # Submodule path -> earlier stage whose best model initialises it (null: as built).
    init: dict[str, str | None] = Field(default_factory=dict)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    augmentation: Augmentation = Field(default_factory=Augmentation)
    views: list[str] = Field(default_factory=list)  # extra named views of a sample
    batch_hook: HookConfig | None = None
    max_epochs: int = Field(300, gt=0, le=MAX_EPOCHS)
    early_stop_patience: int = Field(100, gt=0, le=MAX_EPOCHS)
    limit_train_batches: BatchLimit = 1.0
    limit_val_batches: BatchLimit = 1.0

    @model_validator(mode="after")
    def _limits_and_warmup(self) -> StageConfig:
        for limit in ("limit_train_batches", "limit_val_batches"):
            if isinstance(getattr(self, limit), float) and getattr(self, limit) > 1:
                raise ValueError(f"{limit}: a share of the batches is at most 1.0, a number "
                                 "of them an integer")
        warmup = self.schedule.warmup_epochs
        if self.schedule.name in ("poly", "cosine", "constant") and warmup >= self.max_epochs:
            raise ValueError(f"schedule.warmup_epochs ({warmup}) must be fewer than max_epochs "
                             f"({self.max_epochs})")
        return self


class RunConfig(_Section):
    description: str = ""
    method: str = "condseg"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    stages: dict[str, StageConfig] = Field(min_length=1)  # in training order
    train_stages: list[str] | None = Field(None, min_length=1)  # what `train` runs; None: all
    seed: int = Field(42, ge=0)  # stage k is seeded with seed + k (within MAX_SEED)
    # auto: bf16-mixed where the training device runs bf16 natively, else 32; resolved when a
    # run starts (training.recipe.resolve_precision) and recorded resolved in config.yaml.
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"
    # The training path (docs/performance.md): the fast kernels with recomputation on the CPU,
    # or the plain reference kernels as the network is written; memory_format auto:
    # channels_last on a GPU, NCHW on the CPU and on the plain kernels.
    plain_kernels: bool = False
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    num_nodes: int = Field(1, gt=0)
    log_every_n_steps: int = Field(50, gt=0)  # also the interval of plain progress lines
    progress_bar: bool = True  # a live bar on a terminal, plain lines in a log file
    # last.ckpt is also written within an epoch: every N steps when set, else every M minutes.
    checkpoint_every_n_steps: int | None = Field(None, gt=0)
    checkpoint_every_minutes: float | None = Field(10.0, gt=0, le=MAX_CHECKPOINT_MINUTES)
    # A finished stage keeps last.ckpt (to extend it) and its model file; best.ckpt, the same
    # weights with the optimiser's state, is removed unless kept.
    keep_best_checkpoint: bool = False
    log_images_every_n_epochs: int = Field(5, ge=0)  # TensorBoard prediction grid; 0: never

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, value: Any) -> Any:
        """YAML reads ``precision: 32`` as an int; Lightning's name for it is the string "32"."""
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _stage_references(self) -> RunConfig:
        names = list(self.stages)
        if self.seed + len(names) > MAX_SEED:
            raise ValueError(f"seed must be at most {MAX_SEED - len(names)}: stage k is seeded "
                             f"with seed + k, and seeds are 32-bit")
        for name in self.train_stages or ():
            if name not in self.stages:
                raise ValueError(f"train_stages names {name!r}; the stages are {names}")
        for i, (name, stage) in enumerate(self.stages.items()):
            for part, source in stage.init.items():
                if source is not None and source not in names[:i]:
                    raise ValueError(f"stages.{name}.init.{part} names {source!r}, which is not "
                                     f"an earlier stage (earlier: {names[:i] or 'none'})")
        return self

    def stages_to_train(self) -> list[str]:
        return list(self.train_stages) if self.train_stages is not None else list(self.stages)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def list_presets() -> list[str]:
    """Names of the packaged presets (files in ``condseg/configs``)."""
    folder = resources.files("condseg").joinpath("configs")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str | Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a preset or file and resolve its ``extends:`` chain (child keys win, deep merge)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):  # else a preset's name
        refuse_special(path, "config file", ConfigError, "give the YAML file itself")
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text, source, base_dir = read_text(path, ConfigError, RESAVE), str(path), path.parent
    else:
        name = path.name.removesuffix(".yaml")
        resource = resources.files("condseg").joinpath("configs", f"{name}.yaml")
        if not resource.is_file():
            raise ConfigError(
                f"no config file or preset named {str(name_or_path)!r}; "
                f"presets: {', '.join(list_presets())}"
            )
        text, source, base_dir = resource.read_text(), f"preset {name}", None
    if source in seen:
        raise ConfigError(f"circular 'extends' chain: {' -> '.join((*seen, source))}")
    raw = read_yaml(text, source) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    # A relative path in a user's file is relative to that file; otherwise it names a preset.
    candidate = base_dir / parent if base_dir is not None else None
    ref = candidate if candidate is not None and candidate.is_file() else parent
    return _merge(_read_yaml(ref, (*seen, source)), raw)


def read_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` bounded to :data:`MAX_YAML_VALUES` expanded values, with aliases
    expanded into copies (an override of one place must not change the others); ``source``
    names the text in the one-line error."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {first_line(exc)}") from exc
    if _expanded_size(value, {}, set()) > MAX_YAML_VALUES:
        raise ConfigError(f"{source}: its YAML aliases (*name) expand to more than "
                          f"{MAX_YAML_VALUES:,} values; write the values out instead")
    return _unshared(value)


def _unshared(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _unshared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshared(item) for item in value]
    return value


def _expanded_size(value: Any, sizes: dict[int, int], open_: set[int]) -> int:
    """How many values ``value`` stands for with aliases expanded, capped just above the
    bound; each distinct node is walked once."""
    if not isinstance(value, (dict, list)):
        return 1
    key = id(value)
    if key in sizes:
        return sizes[key]
    if key in open_:  # a node that contains itself expands without end
        return MAX_YAML_VALUES + 1
    open_.add(key)
    size = 1
    for item in value.values() if isinstance(value, dict) else value:
        size = min(size + _expanded_size(item, sizes, open_), MAX_YAML_VALUES + 1)
    open_.discard(key)
    sizes[key] = size
    return size


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Deep merge, ``top`` winning. A named component (a mapping with ``name``) given another
    name is replaced whole: a different loss or model must not inherit the old one's options."""
    out = dict(base)
    for key, value in top.items():
        previous = out.get(key)
        if isinstance(value, dict) and isinstance(previous, dict) and not _renamed(previous, value):
            out[key] = _merge(previous, value)
        else:
            out[key] = value
    return out


def _renamed(base: dict[str, Any], top: dict[str, Any]) -> bool:
    """A registered component with its own ``options`` (model, loss, hook) given another name;
    an optimiser or schedule keeps its other fields (learning rates) when renamed."""
    return ("name" in base and "name" in top and base["name"] != top["name"]
            and ("options" in base or "options" in top))


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form key.sub=value")
    value = read_yaml(text, f"override {override!r}")
    *parents, leaf = key.strip().split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            section = ".".join(parents[: i + 1])
            raise ConfigError(f"override {override!r}: {section} is not a section")
        node = child
    if leaf == "name" and "options" in node and value != _current_name(raw, parents, node):
        del node["options"]  # written for the component being replaced (see _renamed)
    node[leaf] = value


def _current_name(raw: dict[str, Any], parents: list[str], node: dict[str, Any]) -> Any:
    """The name a section has before an override: its own, or for a preset's ``model`` that
    only sets options, the model of the method's recipe."""
    if "name" in node or parents != ["model"]:
        return node.get("name")
    method = raw.get("method", RunConfig.model_fields["method"].default)
    return method_recipe(method)["model"]["name"] if isinstance(method, str) else None


def _check_keys(raw: dict[str, Any], cls: type[BaseModel], prefix: str = "") -> None:
    """Name the unknown key and list the valid ones (pydantic's message lists neither)."""
    fields = cls.model_fields
    for key, value in raw.items():
        where = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            section = f"section {prefix[:-1]!r}" if prefix else "the top level"
            raise ConfigError(
                f"unknown config key {where!r}{hint}; valid keys of {section}: {', '.join(fields)}"
            )
        if not isinstance(value, dict):
            continue
        section, mapping = _section_type(fields[key].annotation)
        if section is not None and mapping:
            for name, item in value.items():
                if isinstance(item, dict):
                    _check_keys(item, section, f"{where}.{name}.")
        elif section is not None:
            _check_keys(value, section, f"{where}.")


def _section_type(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The config section class inside ``annotation`` (``X``, ``X | None`` or ``dict[str, X]``),
    and whether it is a mapping of them."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        inner, _ = _section_type(typing.get_args(annotation)[1])
        return inner, inner is not None
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            inner, mapping = _section_type(arg)
            if inner is not None:
                return inner, mapping
        return None, False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def config_from_dict(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate ``raw`` merged onto the recipe of the method it names (default ``condseg``)."""
    method = raw.get("method", RunConfig.model_fields["method"].default)
    if not isinstance(method, str):
        raise ConfigError(f"{source}: method must be a name, got {method!r}")
    recipe = method_recipe(method)
    foreign = [name for name in raw.get("stages") or {} if name not in recipe["stages"]]
    if foreign:
        raise ConfigError(
            f"{source}: stages {', '.join(foreign)} are not stages of method {method!r} "
            f"({', '.join(recipe['stages'])}); a preset written for another method cannot be "
            "switched with method=... (register a method to add stages)"
        )
    return validated(RunConfig, _merge(recipe, raw), source)


def validated(cls: type[M], raw: dict[str, Any], source: str) -> M:
    """``raw`` as a ``cls`` section: an unknown key is named with the valid ones, invalid values
    are one line (a run config; a study file reads its own schema the same way)."""
    _check_keys(raw, cls)
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise ConfigError(f"{source}: invalid value — {problems}") from None


def _problem(err: Any) -> str:
    """One invalid value: where, why, and the value itself (not a whole section's)."""
    where = ".".join(str(p) for p in err["loc"])
    got = "" if isinstance(err["input"], (dict, list)) else f" (got {err['input']!r})"
    return f"{where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}{got}"


def load_config(
    name_or_path: str | Path = "kvasir-seg", overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Load a packaged preset (``"kvasir-seg"``) or a YAML file, then apply ``a.b=value`` overrides.

    Override values are parsed as YAML (``stages.stage2.optimizer.lr=3e-4``,
    ``data.skip=[a, b]``).
    """
    raw = _read_yaml(name_or_path)
    for override in overrides:
        _apply_override(raw, override)
    return config_from_dict(raw, source=str(name_or_path))
