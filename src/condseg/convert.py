"""Import of checkpoints trained with the ConDSeg authors' code (ConDSeg, Net_0, PVT variant).

Their ``.pth`` files are plain state dicts; we read them with ``weights_only=True`` (nothing is
unpickled) and rename their keys to ours with the rules below. The architecture is recognised
from the keys. Their code feeds images divided by 255 with no mean/std, so imported models
are saved with mean 0 and std 1.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from timm.models.pvt_v2 import checkpoint_filter_fn as pvt_filter
from torch import nn

from condseg.errors import CondsegError, InputNotFoundError, first_line
from condseg.models.registry import create_model

#: (pattern, replacement) applied in order to the authors' ConDSeg / Net_0 key names.
_RULES: list[tuple[str, str]] = [
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


class ConversionError(CondsegError):
    """A file that is not a checkpoint of the authors' ConDSeg, Net_0 or PVT variant."""


def detect_architecture(keys: list[str] | Mapping[str, object]) -> str:
    """Our model name for a state dict in the authors' key names."""
    names = list(keys)
    if any(k.startswith("backbone.") for k in names):
        return "condseg-pvt"
    if any(k.startswith("head.conv_fuse") for k in names):
        return "condseg-net0"
    if any(k.startswith("cdfa1.") for k in names):
        return "condseg"
    raise ConversionError(
        "not a checkpoint of the authors' ConDSeg code: expected keys such as 'cdfa1.*', "
        "'head.conv_fuse.*' (Net_0) or 'backbone.*' (PVT)"
    )


def rename_key(key: str) -> str:
    """One of the authors' (non-backbone) key names in ours."""
    for pattern, replacement in _RULES:
        key = re.sub(pattern, replacement, key)
    return key


def convert_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """(model name, state dict in our key names) for one of the authors' state dicts."""
    name = detect_architecture(state)
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    out = {rename_key(k): v for k, v in state.items() if not k.startswith("backbone.")}
    if backbone:  # their PVT keys are the original repository's: timm knows the renaming
        for k, v in pvt_filter(backbone, None).items():
            out["encoder." + re.sub(r"^stages\.(\d)", r"stages_\1", k)] = v
    return name, out


def load_official(path: str | Path) -> nn.Module:
    """Build our model and load one of the authors' ``.pth`` checkpoints into it (strictly)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        what = f" (it would call {found[1]})" if found else ""
        raise ConversionError(
            f"{path} holds Python objects besides tensors{what}: refused unread, since loading "
            "it could run code; only plain state dicts are imported"
        ) from error
    except Exception as error:  # torch's many ways of failing on a file that is not a .pth
        raise ConversionError(
            f"{path}: cannot be read as a PyTorch state dict ({first_line(error)})"
        ) from error
    if isinstance(state, Mapping) and "state_dict" in state and not any(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path}: expected a state dict, found {type(state).__name__}")
    name, converted = convert_state_dict(state)
    model = create_model(name)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ConversionError(
            f"{path}: does not match our {name!r} architecture "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )
    return model.eval()
