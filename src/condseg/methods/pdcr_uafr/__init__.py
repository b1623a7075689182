"""UAFR and PDCR (Liu et al., "Contrastive and selective hidden embeddings for medical image
segmentation"): plug-ins that attach to any host declaring its sites (``plugin_sites``, see
``models/plugins.py``), the paper's losses (``ce``, ``ce-pdcr``) and the DeepLabV3+ recipe;
binary or K classes, 2-D or 3-D. Without a condseg host (an nnU-Net trainer):
:class:`~condseg.methods.pdcr_uafr.uafr.UAFR`,
:class:`~condseg.methods.pdcr_uafr.pdcr.PatchDragsaw` and
:func:`~condseg.methods.pdcr_uafr.losses.pdcr_loss` (their docstrings show the calls).
Documented in docs/models.md, "PDCR and UAFR plug-ins"."""

from __future__ import annotations

from condseg.methods.pdcr_uafr import losses, pdcr, recipe, uafr  # noqa: F401  (registrations)
