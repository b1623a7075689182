"""DeepLabV3+ with UAFR and H-PDCR, the paper's 2-D recipe (§V-A): cross-entropy + 0.01 · PDCR,
Adam at 1e-3 with weight decay 1e-5 and a cosine schedule, 300 epochs, random scaling 0.8–1.2,
rotation ±90°, shear ±20°, shift 0.1 and flips of both axes. The paper trains at 512 px in
batches of 64; the recipe keeps the project's 256 px and batch 4 (``data.size``,
``data.batch_size``). The ablation presets (``configs/pdcr-*.yaml``) change only the plug-ins."""

from __future__ import annotations

from condseg.recipes import register_method

RECIPE = {
    "model": {"name": "deeplabv3plus",
              "options": {"encoder": "resnet50", "plugins": {"uafr": {}, "pdcr": {}}}},
    "data": {"size": 256, "batch_size": 4},
    "stages": {"train": {
        "loss": {"name": "ce-pdcr", "options": {"weight": 0.01, "tau": 1.0}},
        "optimizer": {"name": "adam", "lr": 1.0e-3, "encoder_lr": 1.0e-3, "weight_decay": 1.0e-5},
        "schedule": {"name": "cosine"},
        "augmentation": {"rotate": 90, "scale": [0.8, 1.2], "shear": 20, "shift": 0.1,
                         "p_rotate": 0.5, "p_flip": 0.5},
        "max_epochs": 300,
        "early_stop_patience": 300,
    }},
}

register_method(
    "deeplabv3plus-pdcr-uafr", RECIPE,
    description="DeepLabV3+ (smp, ResNet-50) with UAFR and H-PDCR, CE + 0.01 PDCR (Liu et al.)")
