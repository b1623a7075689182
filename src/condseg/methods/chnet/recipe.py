"""CHNet's one-stage recipe: the authors trained it with M2SNet's code, so it is that recipe
with their batch size, epochs, one learning rate for every layer and no LossNet."""

from __future__ import annotations

from condseg.methods.msnet.recipe import authors_recipe
from condseg.recipes import register_method

register_method(
    "chnet",
    authors_recipe("chnet", batch_size=32, epochs=100, lr=0.05, encoder_lr=0.05,
                   loss={"name": "structure"}),
    description="CHNet: Res2Net + classification head, structure loss, SGD (authors' code)",
)
