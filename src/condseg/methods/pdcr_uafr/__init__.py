"""Plug-ins that attach to any host model declaring its sites (``plugin_sites``): UAFR and PDCR
(Liu et al., "Contrastive and selective hidden embeddings for medical image segmentation"), the
paper's loss, and the DeepLabV3+ method with its ablations."""

from condseg.models.plugins import losses, pdcr, recipe, uafr  # noqa: F401  (registrations)
from condseg.models.plugins.attach import PLUGINS, attach_plugins

__all__ = ["PLUGINS", "attach_plugins"]
