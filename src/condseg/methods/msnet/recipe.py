"""The one-stage recipes of MSNet and M2SNet, from the authors' training code (which CHNet's
authors reuse: ``methods/chnet/recipe.py`` builds on :func:`authors_recipe`).

SGD with Nesterov momentum, the triangular per-epoch schedule, 352-pixel images with a
horizontal flip only, each batch resized to one of 224..352 (0.64-1.0 of the input size: the
sizes follow ``data.size``, see ``training/hooks.py``), and the authors' normalisation
(their 0–255 mean/std divided by 255, since our images reach the network in [0, 1]).
"""

from __future__ import annotations

from typing import Any

from condseg.recipes import register_method

#: The authors' normalisation on 0–255 values (RGB), in our [0, 1] units.
MEAN = tuple(v / 255 for v in (124.55, 118.90, 102.94))
STD = tuple(v / 255 for v in (56.77, 55.97, 57.50))


def authors_recipe(model: str, *, batch_size: int, epochs: int, lr: float, encoder_lr: float,
                   loss: dict[str, Any]) -> dict[str, Any]:
    """A one-stage method of the MSNet authors' training code, for ``model``."""
    return {
        "model": {"name": model},
        "data": {"size": 352, "batch_size": batch_size, "mean": MEAN, "std": STD},
        "stages": {"train": {
            "loss": loss,
            "optimizer": {"name": "sgd", "lr": lr, "encoder_lr": encoder_lr, "momentum": 0.9,
                          "nesterov": True, "weight_decay": 5.0e-4},
            "schedule": {"name": "triangular"},
            "augmentation": {"rotate": 0, "p_rotate": 0.0, "p_flip": 0.5, "p_vflip": 0.0},
            "batch_hook": {"name": "multiscale"},  # the authors' 224..352 of 352, scaled
            "max_epochs": epochs,
            "early_stop_patience": epochs,  # the authors train every epoch of the schedule
        }},
    }


for _name, _description in (
    ("msnet", "MSNet: subtraction units, structure loss + LossNet, SGD (authors' code)"),
    ("m2snet", "M2SNet: multi-scale subtraction units, structure loss + LossNet, SGD "
               "(authors' code)"),
):
    register_method(
        _name,
        authors_recipe(_name, batch_size=16, epochs=50, lr=0.05, encoder_lr=0.005,
                       loss={"name": "structure", "options": {"lossnet": True}}),
        description=_description,
    )
