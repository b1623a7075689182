"""A method from outside the package, shaped like a packaged family (``condseg/methods/<family>/``):
its own tiny model, its own loss, SGD with a poly schedule, one stage. Importing this package
registers them with the same ``register_*`` calls the packaged families make (through the
public API, ``condseg.register_*``); ``tests/test_custom_method.py`` trains, evaluates and
predicts it. It is the worked example of docs/architecture.md ("Adding a method")."""

from __future__ import annotations

from custom_method import losses, model, recipe  # noqa: F401  (registrations)
