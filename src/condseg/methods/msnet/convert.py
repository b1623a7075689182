"""The authors' MSNet and M2SNet checkpoints (their ``miccai_msnet.py``) in our key names."""

from __future__ import annotations

from collections.abc import Callable

from condseg.methods.msnet.recipe import MEAN, STD
from condseg.models.converters import Converter, Rule, register_converter

#: Levels x1 (stem) .. x5, units named by the levels they span (x5_x4_x3 = order 2 whose
#: shallower input is level 3), level/output by number.
RULES: list[Rule] = [
    (r"^resnet\.", "encoder."),  # their Res2Net-50 v1b has timm res2net50d's key names
    (r"^x([2-5])_dem_1\.", lambda m: f"reduce.{int(m[1]) - 2}."),
    (r"^x5_dem_4\.", "apex."),
    (r"^x5_dem_5\.", "deep."),
    (r"^x\d((?:_x\d)+)\.", lambda m: f"units.{m[1].count('_x') - 1}.{int(m[1][-1]) - 1}."),
    (r"^level([1-3])\.", lambda m: f"fuse.{int(m[1]) - 1}."),
    (r"^output([2-4])\.", lambda m: f"decoder.{int(m[1]) - 2}."),
    (r"^output1\.0\.", "classifier."),
    (r"^conv_3\.", "difference.filters.0."),
    (r"^conv_5\.", "difference.filters.1."),
]


def identify(has: Callable[[str], bool]) -> str | None:
    if has("x5_x4_x3_x2_x1."):
        return "m2snet" if has("conv_3.") else "msnet"
    return None


register_converter("msnet", Converter(
    title="MSNet/M2SNet", signature="'x5_x4_x3_x2_x1.*' (MSNet, with 'conv_3.*' M2SNet)",
    models=("msnet", "m2snet"), identify=identify, rules=RULES,
    unused=r"^resnet\.fc\.",  # the ImageNet classifier of their Res2Net backbone
    mean=MEAN, std=STD, input_size=352,
), description="the authors' MSNet and M2SNet checkpoints (their mean/std, 352 px)")
