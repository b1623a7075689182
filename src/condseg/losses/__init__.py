"""Losses shared by several families, and the loss contract and registry (family-specific
losses live in their family's folder, e.g. ``models/condseg/losses.py``)."""

from __future__ import annotations

from condseg.losses.base import LOSSES, Loss, create_loss, register_loss
from condseg.losses.mask import mask_loss

__all__ = ["LOSSES", "Loss", "create_loss", "mask_loss", "register_loss"]
