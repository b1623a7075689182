"""ConDSeg's two-stage recipe (DESIGN.md §5; the paper's values, epochs from the authors' code).

Stage 1 trains Net_0 on the run model's encoder with Consistency Reinforcement; stage 2 trains
the full ConDSeg, its encoder (parameters and BatchNorm buffers) taken from the best stage-1
model and fine-tuned ten times slower than the rest.
"""

from __future__ import annotations

from condseg.recipes import register_method

_PLATEAU = {"name": "plateau", "patience": 30, "factor": 0.1, "monitor": "val/loss"}

RECIPE = {
    "model": {"name": "condseg", "options": {"width": 128, "cdfa_mode": "official",
                                             "variant": "full"}},
    "data": {"size": 256, "batch_size": 4},
    "stages": {
        "stage1": {
            "model": {"name": "condseg-net0", "inherit": ["encoder"]},
            "loss": {"name": "condseg-cr", "options": {"consistency": True}},
            "views": ["strong"],
            "optimizer": {"name": "adam", "lr": 1.0e-4, "encoder_lr": 1.0e-4},
            "schedule": _PLATEAU,
            "augmentation": {"rotate": 90, "p_rotate": 0.5, "p_flip": 0.5},
            "max_epochs": 300,
            "early_stop_patience": 100,
        },
        "stage2": {
            "init": {"encoder": "stage1"},
            "loss": {"name": "condseg-sid"},
            "optimizer": {"name": "adam", "lr": 1.0e-4, "encoder_lr": 1.0e-5},
            "schedule": _PLATEAU,
            "augmentation": {"rotate": 35, "p_rotate": 0.3, "p_flip": 0.3},
            "max_epochs": 300,
            "early_stop_patience": 100,
        },
    },
}

register_method(
    "condseg", RECIPE,
    description="ConDSeg: Net_0 + Consistency Reinforcement, then the full network (paper)")
