"""The baselines' recipe: one stage, ConDSeg's stage-2 training on the plain mask loss, so that
a comparison differs in the network only (``docs/decisions.md``, Baselines)."""

from __future__ import annotations

from condseg.recipes import register_method

TRAIN_STAGE = {
    "loss": {"name": "bce-dice"},
    "optimizer": {"name": "adam", "lr": 1.0e-4, "encoder_lr": 1.0e-4},
    "schedule": {"name": "plateau", "patience": 30, "factor": 0.1, "monitor": "val/loss"},
    "augmentation": {"rotate": 35, "p_rotate": 0.3, "p_flip": 0.3},
    "max_epochs": 300,
    "early_stop_patience": 100,
}

for _name, _description in (
    ("unet", "U-Net (smp, ResNet-50), one stage, BCE + Dice"),
    ("unetplusplus", "U-Net++ (smp, ResNet-50), one stage, BCE + Dice"),
    ("deeplabv3plus", "DeepLabV3+ (smp, ResNet-50), one stage, BCE + Dice"),
):
    register_method(
        _name,
        {
            "model": {"name": _name, "options": {"encoder": "resnet50"}},
            "data": {"size": 256, "batch_size": 4},
            "stages": {"train": TRAIN_STAGE},
        },
        description=_description,
    )
