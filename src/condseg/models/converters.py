"""How the checkpoints of a family's authors map to our models: each family registers a
:class:`Converter` from its folder (``methods/<family>/convert.py``), and the generic import
(:mod:`condseg.convert`) asks each in turn which of our models a state dict is.

A converter renames the authors' keys with ordered regular-expression rules and records the
normalisation and input size their code used, which the written model file keeps.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor

from condseg.registry import Registry

#: (pattern, replacement) for :func:`re.sub`.
Rule = tuple[str, str | Callable[[re.Match[str]], str]]


@dataclass(frozen=True)
class Converter:
    """The authors' checkpoints of one family."""

    #: How the refusal of an unknown file names the family ("MSNet/M2SNet") and the keys that
    #: identify its checkpoints ("'tf1.*' (CHNet)").
    title: str
    signature: str
    #: Our model names this converter produces.
    models: tuple[str, ...]
    #: ``identify(has)``: the model of a state dict, given ``has(prefix)`` (is there a key that
    #: starts so?); None when the keys are another family's.
    identify: Callable[[Callable[[str], bool]], str | None]
    rules: Sequence[Rule]
    #: Keys the forward pass never uses (a backbone's ImageNet classifier), dropped.
    unused: str | None = None
    #: (mean, std) the authors' code normalises with (None: images divided by 255 only), and
    #: the input size their recipe trains at.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: int = 256

    def rename_key(self, key: str) -> str:
        """One of the authors' key names in ours."""
        for pattern, replacement in self.rules:
            key = re.sub(pattern, replacement, key)
        return key

    def convert(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The authors' state dict in our key names."""
        return {self.rename_key(k): v for k, v in state.items()
                if self.unused is None or not re.match(self.unused, k)}


CONVERTERS: Registry[Converter] = Registry("checkpoint converter")


def register_converter(name: str, converter: Converter, *, description: str = "") -> Converter:
    """Register ``converter`` under ``name``, its family's."""
    return CONVERTERS.register(name, converter, description=description)
