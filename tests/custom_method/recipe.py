"""The recipe: one stage of SGD with a poly schedule on the weighted BCE."""

from __future__ import annotations

import condseg

RECIPE = {
    "model": {"name": "tiny-fcn", "options": {"width": 8}, "pretrained": False},
    "data": {"size": 32, "batch_size": 4, "num_workers": 0},
    "stages": {"train": {
        "loss": {"name": "weighted-bce", "options": {"pos_weight": 2.0}},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
                      "weight_decay": 1e-4},
        "schedule": {"name": "poly", "power": 0.9},
        "max_epochs": 3,
    }},
}

condseg.register_method("tiny", RECIPE,
                        description="A tiny FCN trained with SGD + poly (test method)")
