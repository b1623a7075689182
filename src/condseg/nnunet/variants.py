"""The nnU-Net v2 trainer variants: UAFR, PDCR and both on nnU-Net's own U-Net (any 2-D or
3-D configuration), M2SNet as a ``2d`` network, and their ``_5epochs`` versions.

Each is a subclass of ``nnUNetTrainer`` that changes only what it must: the network, built in
the static ``build_network_architecture`` (which nnU-Net's predictor calls again to rebuild it
before loading the checkpoint strictly), and for PDCR the loss (nnU-Net's Dice + CE, with deep
supervision, + 0.01 × PDCR). nnU-Net finds them by class name in the folder
``condseg nnunet trainers`` prints (its ``nnUNet_extTrainer`` variable).
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from condseg.nnunet.m2snet import M2SNetForNNUNet
from condseg.nnunet.plugins import PDCR_WEIGHT, WithPDCR, add_pdcr, add_uafr


def _unwrapped(network: nn.Module) -> nn.Module:
    """The network under DDP's and torch.compile's wrappers."""
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)


def _network_with(*, uafr: bool = False, pdcr: bool = False) -> staticmethod:
    """A variant's ``build_network_architecture``: nnU-Net's own network with the plug-ins
    asked for (UAFR first, so that PDCR samples the re-weighted features, as the paper does)."""

    def build(plans_manager, configuration_manager, num_input_channels, num_output_channels,
              enable_deep_supervision=True):
        network = nnUNetTrainer.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels,
            enable_deep_supervision)
        if uafr:
            network = add_uafr(network, num_output_channels)
        return add_pdcr(network) if pdcr else network

    return staticmethod(build)


class nnUNetTrainerUAFR(nnUNetTrainer):
    """nnU-Net's U-Net with UAFR after every decoder stage."""

    build_network_architecture = _network_with(uafr=True)


class _PDCRLoss:
    """The loss of the PDCR variants: nnU-Net's, + 0.01 × PDCR on its label maps. PDCR's
    capture hooks keep Python state across the forward pass, so these variants do not run
    under torch.compile (nnU-Net's default on CUDA)."""

    def _build_loss(self):
        if self.label_manager.has_regions:
            raise RuntimeError(
                f"{type(self).__name__}: PDCR compares class ratios of a label map; this "
                "dataset is trained on regions (dataset.json regions_class_order). Use its "
                "labels, or nnUNetTrainerUAFR")
        return WithPDCR(super()._build_loss(), _unwrapped(self.network).pdcr,
                        self.label_manager.num_segmentation_heads,
                        self.label_manager.ignore_label, PDCR_WEIGHT)

    def _do_i_compile(self):
        return False


class nnUNetTrainerPDCR(_PDCRLoss, nnUNetTrainer):
    """nnU-Net's U-Net, its loss + 0.01 × PDCR (encoder, decoder and cross-layer terms)."""

    build_network_architecture = _network_with(pdcr=True)


class nnUNetTrainerPDCRUAFR(_PDCRLoss, nnUNetTrainer):
    """Both plug-ins, the paper's full method (Table II, "+ PDCR + UAFR")."""

    build_network_architecture = _network_with(uafr=True, pdcr=True)


class nnUNetTrainerM2SNet(nnUNetTrainer):
    """M2SNet (condseg's ``m2snet``, no pretrained weights) for the ``2d`` configuration, with
    nnU-Net's loss; no deep supervision (M2SNet has one output)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True):
        if len(configuration_manager.patch_size) != 2:
            raise RuntimeError("nnUNetTrainerM2SNet is a 2-D network: train the 2d "
                               "configuration (nnUNetv2_train DATASET 2d FOLD -tr ...)")
        return M2SNetForNNUNet(num_input_channels, num_output_channels)

    def set_deep_supervision_enabled(self, enabled: bool):
        """M2SNet has no deep-supervision outputs to switch."""


def _short(base: type, epochs: int = 5) -> type:
    """``<base>_<epochs>epochs``, nnU-Net's style of a short variant for tests and trials."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = epochs

    name = f"{base.__name__}_{epochs}epochs"
    return type(name, (base,), {"__init__": __init__, "__module__": __name__,
                                "__qualname__": name, "__doc__": f"{base.__name__}, {epochs} "
                                "epochs."})


nnUNetTrainerUAFR_5epochs = _short(nnUNetTrainerUAFR)
nnUNetTrainerPDCR_5epochs = _short(nnUNetTrainerPDCR)
nnUNetTrainerPDCRUAFR_5epochs = _short(nnUNetTrainerPDCRUAFR)
nnUNetTrainerM2SNet_5epochs = _short(nnUNetTrainerM2SNet)

#: Every variant, by the name given to ``-tr``.
VARIANTS = {cls.__name__: cls for cls in (
    nnUNetTrainerUAFR, nnUNetTrainerPDCR, nnUNetTrainerPDCRUAFR, nnUNetTrainerM2SNet,
    nnUNetTrainerUAFR_5epochs, nnUNetTrainerPDCR_5epochs, nnUNetTrainerPDCRUAFR_5epochs,
    nnUNetTrainerM2SNet_5epochs)}
