"""MSNet and M2SNet (Zhao et al.): the subtraction network, its multi-scale units, the recipe."""

from __future__ import annotations

from condseg.models.msnet import model, recipe  # noqa: F401  (registrations)
