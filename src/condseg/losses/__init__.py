"""The loss contract and registry, and the losses shared by several families (importing this
package registers them); a family's own losses live in its folder, e.g.
``methods/condseg/losses.py``."""

from __future__ import annotations

from condseg.losses.base import LOSSES, Loss, create_loss, register_loss
from condseg.losses.mask import mask_loss
from condseg.losses.structure import StructureLoss

__all__ = ["LOSSES", "Loss", "StructureLoss", "create_loss", "mask_loss", "register_loss"]
