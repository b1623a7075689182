"""CHNet (Wei et al.): a Res2Net encoder and a pixel classification head, and its recipe."""

from __future__ import annotations

from condseg.models.chnet import model, recipe  # noqa: F401  (registrations)
