"""Loss functions; the ConDSeg losses are re-exported here for short imports."""

from __future__ import annotations

from condseg.losses.condseg import consistency_loss, mask_loss, stage1_loss, stage2_loss

__all__ = ["consistency_loss", "mask_loss", "stage1_loss", "stage2_loss"]
