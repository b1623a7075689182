"""Model registry: families register their builders from their own folder (timm-style), and
``create_model(name, **options)`` builds any of them.

This module imports no family: the first lookup loads the packaged ones
(``condseg.models.load_families``), and a user's own model registers itself with
:func:`register_model` before use.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import PydanticSchemaGenerationError, TypeAdapter, ValidationError

from condseg.models.base import ModelError, SegmentationModel
from condseg.registry import same_registration

Builder = TypeVar("Builder", bound=Callable[..., SegmentationModel])


@dataclass(frozen=True)
class ModelEntry:
    builder: Callable[..., SegmentationModel]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)


_MODELS: dict[str, ModelEntry] = {}
_families_loaded = False


def _load_families() -> None:
    global _families_loaded
    if not _families_loaded:
        from condseg.models import load_families

        load_families()
        _families_loaded = True  # only once it worked: a failed import is retried, not hidden


def register_model(
    name: str, *, description: str = "", defaults: dict[str, Any] | None = None
) -> Callable[[Builder], Builder]:
    """Decorator registering a model class or builder function under ``name``.

    ``defaults`` are options applied under the caller's (e.g. the encoder of a named variant).
    The builder receives ``pretrained``/``weights`` only when ImageNet weights are asked for.
    """

    def decorate(builder: Builder) -> Builder:
        if name in _MODELS and not same_registration(_MODELS[name].builder, builder):
            raise ModelError(f"a model named {name!r} is registered already")
        _MODELS[name] = ModelEntry(builder, description, dict(defaults or {}))
        return builder

    return decorate


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    _load_families()
    return sorted(_MODELS)


def describe_models() -> dict[str, str]:
    """One line of description per model name."""
    return {name: _MODELS[name].description for name in list_models()}


def model_options(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options ``name`` is built with: its registered defaults under ``options``."""
    return {**_entry(name).defaults, **(options or {})}


def create_model(
    name: str, *, pretrained: bool = False, weights: str | Path | None = None, **options: Any
) -> SegmentationModel:
    """Build a registered model. ``pretrained``/``weights`` concern the ImageNet encoder; the
    option ``plugins`` attaches plug-ins to any model that declares its sites
    (:mod:`condseg.models.plugins`)."""
    entry = _entry(name)
    extra: dict[str, Any] = {}
    if pretrained:
        extra["pretrained"] = True
    if weights is not None:
        extra["weights"] = weights
    built = model_options(name, options)
    plugins = built.pop("plugins", None)
    _check_option_types(name, entry.builder, built)
    try:
        model = entry.builder(**built, **extra)
    except TypeError as error:
        raise ModelError(f"bad option for model {name!r}: {error}") from error
    if not isinstance(model, SegmentationModel):
        raise ModelError(f"the builder of model {name!r} returned {type(model).__name__}, not "
                         "a SegmentationModel (condseg.models.base)")
    if plugins is not None:
        from condseg.models.plugins.attach import attach_plugins

        attach_plugins(model, plugins)
    model.arch = {"name": name, "options": dict(options)}
    return model


def _check_option_types(name: str, builder: Callable[..., Any], options: dict[str, Any]) -> None:
    """Refuse an option whose value does not fit the builder's annotation (``width: int``
    given "abc"), naming it: deep inside the network the same mistake is an unrelated error.
    Options whose annotation pydantic cannot check are left to the builder."""
    try:
        hints = typing.get_type_hints(builder.__init__ if isinstance(builder, type) else builder)
    except Exception:  # annotations that do not resolve here: the builder checks
        return
    for key, value in options.items():
        if key not in hints:
            continue
        try:
            TypeAdapter(hints[key]).validate_python(value)
        except PydanticSchemaGenerationError:
            continue
        except ValidationError as error:
            raise ModelError(f"model {name!r}: option {key}={value!r} is not valid "
                             f"({error.errors()[0]['msg']})") from None


def _entry(name: str) -> ModelEntry:
    _load_families()
    if name not in _MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _MODELS[name]
