"""The authors' CHNet checkpoints (their ``CHNet.py``) in our key names; their training code is
MSNet's, so the normalisation and input size are MSNet's too."""

from __future__ import annotations

from collections.abc import Callable

from condseg.methods.msnet.recipe import MEAN, STD
from condseg.models.converters import Converter, Rule, register_converter

#: encode1 = (conv1, bn1, relu), encode2 = (maxpool, layer1).
RULES: list[Rule] = [
    (r"^encode1\.0\.", "encoder.conv1."),
    (r"^encode1\.1\.", "encoder.bn1."),
    (r"^encode2\.1\.", "encoder.layer1."),
    (r"^encode([34])\.", lambda m: f"encoder.layer{int(m[1]) - 1}."),
    (r"^tf([1-4])\.", lambda m: f"reduce.{int(m[1]) - 1}."),
]


def identify(has: Callable[[str], bool]) -> str | None:
    return "chnet" if has("tf1.") and has("encode1.") else None


register_converter("chnet", Converter(
    title="CHNet", signature="'tf1.*' (CHNet)", models=("chnet",), identify=identify,
    rules=RULES, mean=MEAN, std=STD, input_size=352,
), description="the authors' CHNet checkpoints (MSNet's mean/std, 352 px)")
