"""The authors' ConDSeg, Net_0 and PVT checkpoints in our key names (DESIGN.md §3: their
backbone keys differ from timm's by structure only)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from timm.models.pvt_v2 import checkpoint_filter_fn as pvt_filter
from torch import Tensor

from condseg.models.converters import Converter, Rule, register_converter

#: (pattern, replacement) applied in order to the authors' ConDSeg / Net_0 key names.
RULES: list[Rule] = [
    # ResNet-50 backbone: their layer0 = (conv1, bn1, relu), layer1 = (maxpool, timm layer1).
    (r"^layer0\.0\.", "encoder.conv1."),
    (r"^layer0\.1\.", "encoder.bn1."),
    (r"^layer1\.1\.", "encoder.layer1."),
    (r"^layer([23])\.", r"encoder.layer\1."),
    # Feature enhancement (their dconv1..4: c1..c4 branches, c5 fuse, c6 shortcut).
    (r"^dconv(\d)\.c([1-4])\.", lambda m: f"fems.{int(m[1]) - 1}.branches.{int(m[2]) - 1}."),
    (r"^dconv(\d)\.c5\.", lambda m: f"fems.{int(m[1]) - 1}.fuse."),
    (r"^dconv(\d)\.c6\.", lambda m: f"fems.{int(m[1]) - 1}.shortcut."),
    (r"^dconv(\d)\.sa\.conv1\.", lambda m: f"fems.{int(m[1]) - 1}.sa.conv."),
    # SID branches and their auxiliary heads.
    (r"^decouple_layer\.cbr_(fg|bg|uc)\.", r"sid.\1."),
    (r"^aux_head\.branch_(fg|bg|uc)\.", r"aux_heads.\1."),
    # Guidance: c1 is the first CBR, preprocess.conv_k the CBR after the k-th upsampling.
    (r"^preprocess_(fg|bg)(\d)\.c1\.", lambda m: f"guides_{m[1]}.{int(m[2]) - 1}.0."),
    (r"^preprocess_(fg|bg)(\d)\.preprocess\.conv_(\d)\.",
     lambda m: f"guides_{m[1]}.{int(m[2]) - 1}.{2 * int(m[3]) + 2}."),
    # CDFA.
    (r"^cdfa(\d)\.v\.", lambda m: f"cdfas.{int(m[1]) - 1}.value."),
    (r"^cdfa(\d)\.input_cbr\.", lambda m: f"cdfas.{int(m[1]) - 1}.inp."),
    (r"^cdfa(\d)\.output_cbr\.", lambda m: f"cdfas.{int(m[1]) - 1}.out."),
    (r"^cdfa(\d)\.", lambda m: f"cdfas.{int(m[1]) - 1}."),
    # Net_0 head (before the output block, whose keys become head.*).
    (r"^head\.conv([1-4])\.", lambda m: f"sides.{int(m[1]) - 1}."),
    (r"^head\.conv_fuse\.", "classifier."),
    # Size-aware decoder and output block.
    (r"^decoder_(small|middle|large)\.c1\.", r"decoder.\1.reduce."),
    (r"^decoder_(small|middle|large)\.c([2-4])\.",
     lambda m: f"decoder.{m[1]}.conv{int(m[2]) - 1}."),
    (r"^decoder_(small|middle|large)\.sa\.conv1\.", r"decoder.\1.sa.conv."),
    (r"^decoder_(small|middle|large)\.", r"decoder.\1."),
    (r"^output_block\.fuse\.", "head.fuse."),
    (r"^output_block\.c1\.", "head.conv1."),
    (r"^output_block\.c2\.", "head.conv2."),
    (r"^output_block\.c3\.", "head.classifier."),
    # Their CBR wraps (conv, bn) as `.conv.0` / `.conv.1`; ours is the Sequential itself.
    (r"\.conv\.([01])\.", r".\1."),
]


def identify(has: Callable[[str], bool]) -> str | None:
    if has("backbone."):
        return "condseg-pvt"
    if has("head.conv_fuse"):
        return "condseg-net0"
    if has("cdfa1."):
        return "condseg"
    return None


class ConDSegConverter(Converter):
    """The rules, plus the PVT backbone: their keys are the original PVT repository's, whose
    renaming timm knows."""

    def convert(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = super().convert({k: v for k, v in state.items() if not k.startswith("backbone.")})
        backbone = {k.removeprefix("backbone."): v for k, v in state.items()
                    if k.startswith("backbone.")}
        if backbone:
            for k, v in pvt_filter(backbone, None).items():
                out["encoder." + re.sub(r"^stages\.(\d)", r"stages_\1", k)] = v
        return out


register_converter("condseg", ConDSegConverter(
    title="ConDSeg",
    signature="'cdfa1.*' (ConDSeg), 'head.conv_fuse.*' (Net_0), 'backbone.*' (PVT)",
    models=("condseg", "condseg-net0", "condseg-pvt"), identify=identify, rules=RULES,
), description="the authors' ConDSeg, Net_0 and PVT checkpoints (their code divides by 255 only)")
