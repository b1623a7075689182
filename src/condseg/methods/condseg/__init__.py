"""ConDSeg (Lei et al., AAAI 2025): the networks, their losses and the two-stage recipe."""

from __future__ import annotations

from condseg.models.condseg import losses, model, net0, recipe  # noqa: F401  (registrations)
