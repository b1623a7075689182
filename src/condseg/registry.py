"""One registry type for every seam a method plugs into — models, losses, methods, plug-ins,
batch hooks, views and checkpoint converters — so that the engine looks things up by name and
never imports a family.

Every ``register_*`` has the signature of :meth:`Registry.register`: ``(name, item, *,
description="")``; left without its item, it is a decorator. The first lookup in any registry
imports the packaged families (:mod:`condseg.methods`, which register themselves) once:
:func:`load_packaged` is the only place the engine names them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Generic, TypeVar, overload

from condseg.errors import CondsegError, RegistryError

T = TypeVar("T")
_packaged_loaded = False


def load_packaged() -> None:
    """Import the packaged families once; a failed import is retried, not hidden."""
    global _packaged_loaded
    if not _packaged_loaded:
        import_module("condseg.methods")
        _packaged_loaded = True


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered item, its one-line description and the options it is used with by default
    (those given by its user win)."""

    item: T
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Names to items (classes, builders, recipes); ``error`` is raised for an unknown or
    doubly registered name."""

    def __init__(self, kind: str, error: type[CondsegError] = RegistryError) -> None:
        self.kind = kind
        self.error = error
        self._entries: dict[str, Entry[T]] = {}

    @overload
    def register(self, name: str, item: None = None, *, description: str = "",
                 defaults: Mapping[str, Any] | None = None) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, item: T, *, description: str = "",
                 defaults: Mapping[str, Any] | None = None) -> T: ...

    def register(self, name: str, item: T | None = None, *, description: str = "",
                 defaults: Mapping[str, Any] | None = None) -> T | Callable[[T], T]:
        """Register ``item`` under ``name`` and return it; without ``item``, a decorator that
        does. Registering the same thing again (an equal recipe, a class redefined in a
        notebook) replaces it; anything else under a taken name is an error."""
        if item is None:
            return lambda item: self.register(name, item, description=description,
                                              defaults=defaults)
        if isinstance(item, str):  # the positional description of older versions
            raise TypeError(f"register a {self.kind} as register(name, item, description=...); "
                            f"got the text {item!r} where the {self.kind} belongs")
        if name in self._entries and not same_registration(self._entries[name].item, item):
            raise self.error(f"a {self.kind} named {name!r} is registered already")
        self._entries[name] = Entry(item, description, dict(defaults or {}))
        return item

    def entry(self, name: str) -> Entry[T]:
        load_packaged()
        if name not in self._entries:
            raise self.error(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            )
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).item

    def names(self) -> list[str]:
        load_packaged()
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        """One line of description per name, sorted by name."""
        return {name: self._entries[name].description for name in self.names()}

    def entries(self) -> dict[str, Entry[T]]:
        """Every entry, in the order of registration (the packaged families' fixed order)."""
        load_packaged()
        return dict(self._entries)


def same_registration(old: object, new: object) -> bool:
    """The same object, an equal one, or the same class or function defined again."""
    if old is new or old == new:
        return True
    key = ("__module__", "__qualname__")
    return all(getattr(old, k, None) is not None and getattr(old, k, None) == getattr(new, k, 0)
               for k in key)
