"""A named registry: how losses, extra views, batch hooks and methods plug in without the engine
knowing them (models have their own, with default options: ``condseg.models.registry``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from condseg.errors import CondsegError

T = TypeVar("T")


class RegistryError(CondsegError):
    """An unknown or doubly registered name."""


class Registry(Generic[T]):
    """Names to objects (builders, recipes) with a one-line description each."""

    def __init__(self, kind: str, load: Callable[[], object] | None = None) -> None:
        self.kind = kind
        self._load = load  # imports the packaged registrations on first use
        self._items: dict[str, tuple[T, str]] = {}

    def add(self, name: str, item: T, description: str = "") -> T:
        """Register ``item``; registering the same thing again (an equal recipe, a class
        redefined in a notebook) replaces it, anything else under a taken name is an error."""
        if name in self._items and not same_registration(self._items[name][0], item):
            raise RegistryError(f"a {self.kind} named {name!r} is registered already")
        self._items[name] = (item, description)
        return item

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda item: self.add(name, item, description)

    def get(self, name: str) -> T:
        self._loaded()
        if name not in self._items:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            )
        return self._items[name][0]

    def names(self) -> list[str]:
        self._loaded()
        return sorted(self._items)

    def describe(self) -> dict[str, str]:
        return {name: self._items[name][1] for name in self.names()}

    def _loaded(self) -> None:
        if self._load is not None:
            self._load()
            self._load = None  # only once it worked: a failed import is retried, not hidden


def same_registration(old: object, new: object) -> bool:
    """The same object, an equal one, or the same class or function defined again."""
    if old is new or old == new:
        return True
    key = ("__module__", "__qualname__")
    return all(getattr(old, k, None) is not None and getattr(old, k, None) == getattr(new, k, 0)
               for k in key)
