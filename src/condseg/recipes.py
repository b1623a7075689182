"""Methods: a method is a named recipe — its model and its ordered training stages, written as
the configuration they stand for (the keys of :class:`condseg.config.RunConfig`).

A family registers its method from its own folder (``methods/condseg/recipe.py``); a user
registers theirs with :func:`register_method` and trains it like any other. Presets, files and
``key=value`` overrides are merged onto the recipe, so every value stays configurable. The
registry lives below the configuration, which reads recipes through it without knowing a family.
"""

from __future__ import annotations

import copy
from typing import Any

from condseg.registry import Registry

METHODS: Registry[dict[str, Any]] = Registry("method")


def register_method(name: str, recipe: dict[str, Any], *, description: str = "") -> dict[str, Any]:
    """Register ``recipe`` (a dict of run-config keys with at least ``model`` and ``stages``)
    as the method ``name``; it is checked the first time a config uses it. (A recipe is data,
    so unlike the other ``register_*`` this one is not a decorator.)"""
    return METHODS.register(name, {"description": description, **recipe, "method": name},
                            description=description)


def method_recipe(name: str) -> dict[str, Any]:
    """A copy of the recipe of ``name`` (callers may merge into it)."""
    return copy.deepcopy(METHODS.get(name))


def list_methods() -> list[str]:
    return METHODS.names()
