"""condseg's nnU-Net trainer variants, for nnU-Net's search by class name (see the package)."""

from condseg.nnunet.variants import (  # noqa: F401  (found by name)
    nnUNetTrainerM2SNet,
    nnUNetTrainerM2SNet_5epochs,
    nnUNetTrainerPDCR,
    nnUNetTrainerPDCR_5epochs,
    nnUNetTrainerPDCRUAFR,
    nnUNetTrainerPDCRUAFR_5epochs,
    nnUNetTrainerUAFR,
    nnUNetTrainerUAFR_5epochs,
)
