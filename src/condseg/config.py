"""Typed run configuration: packaged YAML presets, ``extends:`` chains, ``a.b=value`` overrides.

A run is fully described by a :class:`RunConfig`; the resolved config is written into every run
directory so that a run can be repeated or resumed from that file alone.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from condseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

Triple = tuple[float, float, float]


class ConfigError(ValueError):
    """A preset, YAML file or override that cannot be turned into a :class:`RunConfig`."""


class _Section(BaseModel):
    """Unknown keys are errors: a misspelt key must never silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = "condseg"
    options: dict[str, Any] = Field(default_factory=dict)  # passed to create_model
    pretrained: bool = True
    weights: Path | None = None  # local ImageNet weights file for the encoder (no network needed)


class DataConfig(_Section):
    root: Path | None = None
    size: int = Field(256, gt=0)
    batch_size: int = Field(4, gt=0)
    num_workers: int = Field(2, ge=0)
    mean: Triple = IMAGENET_MEAN
    std: Triple = IMAGENET_STD
    train_split: str = "train"
    val_split: str = "val"
    skip: list[str] = Field(default_factory=list)  # names excluded after the integrity check


class Augmentation(_Section):
    rotate: float = Field(90.0, ge=0)
    p_rotate: float = Field(0.5, ge=0, le=1)
    p_flip: float = Field(0.5, ge=0, le=1)


class StageConfig(_Section):
    max_epochs: int = Field(300, gt=0)
    lr: float = Field(1e-4, gt=0)
    encoder_lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    plateau_patience: int = Field(30, ge=0)
    plateau_factor: float = Field(0.1, gt=0, lt=1)
    early_stop_patience: int = Field(100, gt=0)
    augmentation: Augmentation = Field(default_factory=Augmentation)
    limit_train_batches: int | float = Field(1.0, ge=0)
    limit_val_batches: int | float = Field(1.0, gt=0)


class Stage1Config(StageConfig):
    # Consistency Reinforcement; off = Net_0 trained on the mask loss alone.
    consistency: bool = True


class Stage2Config(StageConfig):
    encoder_lr: float = Field(1e-5, gt=0)
    augmentation: Augmentation = Field(
        default_factory=lambda: Augmentation(rotate=35.0, p_rotate=0.3, p_flip=0.3)
    )
    # "stage1": the encoder of the best stage-1 Net_0 (two-stage recipe); "pretrained": whatever
    # create_model gives (ImageNet or random), i.e. the one-stage setting of Table 3.
    encoder_init: Literal["stage1", "pretrained"] = "stage1"


class RunConfig(_Section):
    description: str = ""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    stages: list[Literal[1, 2]] = Field(default_factory=lambda: [1, 2], min_length=1)
    stage1: Stage1Config = Field(default_factory=Stage1Config)
    stage2: Stage2Config = Field(default_factory=Stage2Config)
    seed: int = 42
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    num_nodes: int = Field(1, gt=0)
    log_every_n_steps: int = Field(50, gt=0)
    progress_bar: bool = True

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, value: Any) -> Any:
        """YAML reads ``precision: 32`` as an int; Lightning's name for it is the string "32"."""
        return str(value) if isinstance(value, int) else value

    def stage(self, n: int) -> StageConfig:
        return self.stage1 if n == 1 else self.stage2

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def list_presets() -> list[str]:
    """Names of the packaged presets (files in ``condseg/configs``)."""
    folder = resources.files("condseg").joinpath("configs")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str | Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a preset or file and resolve its ``extends:`` chain (child keys win, deep merge)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text, source, base_dir = path.read_text(), str(path), path.parent
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
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    # A relative path in a user's file is relative to that file; otherwise it names a preset.
    candidate = base_dir / parent if base_dir is not None else None
    ref = candidate if candidate is not None and candidate.is_file() else parent
    return _merge(_read_yaml(ref, (*seen, source)), raw)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML: {exc}") from exc
    *parents, leaf = key.strip().split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            section = ".".join(parents[: i + 1])
            raise ConfigError(f"override {override!r}: {section} is not a section")
        node = child
    node[leaf] = value


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
        annotation = fields[key].annotation
        if isinstance(value, dict) and isinstance(annotation, type) and issubclass(
            annotation, BaseModel
        ):
            _check_keys(value, annotation, f"{where}.")


def config_from_dict(raw: dict[str, Any], source: str = "config") -> RunConfig:
    _check_keys(raw, RunConfig)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err['input']!r})"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: invalid value — {problems}") from None


def load_config(
    name_or_path: str | Path = "kvasir-seg", overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Load a packaged preset (``"kvasir-seg"``) or a YAML file, then apply ``a.b=value`` overrides.

    Override values are parsed as YAML (``stage2.lr=3e-4``, ``data.skip=[a, b]``).
    """
    raw = _read_yaml(name_or_path)
    for override in overrides:
        _apply_override(raw, override)
    return config_from_dict(raw, source=str(name_or_path))
