"""Model registry: families register their builders from their own folder (timm-style), and
``create_model(name, **options)`` builds any of them.

This module imports no family: the first lookup loads the packaged ones
(:func:`condseg.registry.load_packaged`), and a user's own model registers itself with
:func:`register_model` before use.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import PydanticSchemaGenerationError, TypeAdapter, ValidationError

from condseg.errors import ModelError
from condseg.models.base import SegmentationModel, check_num_classes
from condseg.models.plugins import attach_plugins
from condseg.registry import Registry

MODELS: Registry[Callable[..., SegmentationModel]] = Registry("model", error=ModelError)


def register_model(
    name: str, builder: Callable[..., SegmentationModel] | None = None, *,
    description: str = "", defaults: Mapping[str, Any] | None = None,
) -> Any:
    """Register a model class or builder function under ``name`` (without ``builder``: a
    decorator that does).

    ``defaults`` are options applied under the caller's (e.g. the encoder of a named variant).
    The builder receives ``pretrained``/``weights`` only when ImageNet weights are asked for.
    """
    return MODELS.register(name, builder, description=description, defaults=defaults)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return MODELS.names()


def describe_models() -> dict[str, str]:
    """One line of description per model name."""
    return MODELS.describe()


def model_options(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options ``name`` is built with: its registered defaults under ``options``."""
    return {**MODELS.entry(name).defaults, **(options or {})}


def create_model(
    name: str, *, pretrained: bool = False, weights: str | Path | None = None, **options: Any
) -> SegmentationModel:
    """Build a registered model. ``pretrained``/``weights`` concern the ImageNet encoder; the
    option ``plugins`` attaches plug-ins to any model that declares its sites
    (:mod:`condseg.models.plugins`); the option ``num_classes`` (default 1, binary) is checked
    here and reaches the builder only when it is 2 or more, so that a binary model is built,
    and its ``arch`` recorded, exactly as before classes existed."""
    builder = MODELS.get(name)
    extra: dict[str, Any] = {}
    if pretrained:
        extra["pretrained"] = True
    if weights is not None:
        extra["weights"] = weights
    built = model_options(name, options)
    plugins = built.pop("plugins", None)
    num_classes = check_num_classes(built.pop("num_classes", 1), f"model {name!r}")
    _check_option_types(name, builder, built)
    options = {key: value for key, value in options.items() if key != "num_classes"}
    if num_classes != 1:
        if not _takes_num_classes(builder):
            raise ModelError(f"model {name!r} takes no num_classes option (its builder has "
                             f"none), so it is binary, not {num_classes} classes; give its "
                             "builder a num_classes option or use a model that takes classes")
        extra["num_classes"] = options["num_classes"] = num_classes
    try:
        model = builder(**built, **extra)
    except TypeError as error:
        raise ModelError(f"bad option for model {name!r}: {error}") from error
    if not isinstance(model, SegmentationModel):
        raise ModelError(f"the builder of model {name!r} returned {type(model).__name__}, not "
                         "a SegmentationModel (condseg.models.base)")
    if plugins is not None:
        attach_plugins(model, plugins)
    model.num_classes = num_classes
    model.arch = {"name": name, "options": options}
    return model


def _takes_num_classes(builder: Callable[..., Any]) -> bool:
    """Whether the builder has a ``num_classes`` parameter (or takes any keyword)."""
    try:
        parameters = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the call decide
        return True
    return any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in parameters)


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

