"""Import of checkpoints trained with the authors' code: ConDSeg (with Net_0 and the PVT
variant), MSNet, M2SNet and CHNet.

Their ``.pth`` files are plain state dicts (possibly under ``state_dict`` or with DataParallel's
``module.`` prefix); we read them with ``weights_only=True`` (nothing is unpickled) and rename
their keys to ours with the rules below. The architecture is recognised from the keys. The
ConDSeg code feeds images divided by 255 with no mean/std, so those models are saved without
one; MSNet's code (also CHNet's) normalises with its own mean/std, which the file keeps.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from timm.models.pvt_v2 import checkpoint_filter_fn as pvt_filter

from condseg.errors import CondsegError, InputNotFoundError, first_line, refuse_existing
from condseg.filekind import file_kind, is_torch_file
from condseg.models.base import SegmentationModel
from condseg.models.model_file import first_non_finite, save_model
from condseg.models.msnet.recipe import MEAN as MSNET_MEAN
from condseg.models.msnet.recipe import STD as MSNET_STD
from condseg.models.registry import create_model

Rule = tuple[str, str | Callable[[re.Match[str]], str]]

#: (pattern, replacement) applied in order to the authors' ConDSeg / Net_0 key names.
_CONDSEG_RULES: list[Rule] = [
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

#: MSNet / M2SNet (their miccai_msnet.py): levels x1 (stem) .. x5, units named by the levels
#: they span (x5_x4_x3 = order 2 whose shallower input is level 3), level/output by number.
_MSNET_RULES: list[Rule] = [
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

#: CHNet (their CHNet.py): encode1 = (conv1, bn1, relu), encode2 = (maxpool, layer1).
_CHNET_RULES: list[Rule] = [
    (r"^encode1\.0\.", "encoder.conv1."),
    (r"^encode1\.1\.", "encoder.bn1."),
    (r"^encode2\.1\.", "encoder.layer1."),
    (r"^encode([34])\.", lambda m: f"encoder.layer{int(m[1]) - 1}."),
    (r"^tf([1-4])\.", lambda m: f"reduce.{int(m[1]) - 1}."),
]

_RULES: dict[str, list[Rule]] = {
    "condseg": _CONDSEG_RULES, "condseg-net0": _CONDSEG_RULES, "condseg-pvt": _CONDSEG_RULES,
    "msnet": _MSNET_RULES, "m2snet": _MSNET_RULES, "chnet": _CHNET_RULES,
}

#: Keys the forward pass never uses: the ImageNet classifier of MSNet's Res2Net backbone.
_UNUSED = re.compile(r"^resnet\.fc\.")

#: (mean, std) the authors' code normalises with (None: images divided by 255 only), and the
#: input size their recipe trains at; a model file records both.
_NORMALIZATION = {"msnet": (MSNET_MEAN, MSNET_STD), "m2snet": (MSNET_MEAN, MSNET_STD),
                  "chnet": (MSNET_MEAN, MSNET_STD)}
_INPUT_SIZE = {"msnet": 352, "m2snet": 352, "chnet": 352}


class ConversionError(CondsegError):
    """A file that is not a checkpoint of the authors' ConDSeg, MSNet, M2SNet or CHNet code."""


def detect_architecture(keys: list[str] | Mapping[str, object]) -> str:
    """Our model name for a state dict in the authors' key names."""
    names = list(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in names)

    if has("backbone."):
        return "condseg-pvt"
    if has("head.conv_fuse"):
        return "condseg-net0"
    if has("cdfa1."):
        return "condseg"
    if has("x5_x4_x3_x2_x1."):
        return "m2snet" if has("conv_3.") else "msnet"
    if has("tf1.") and has("encode1."):
        return "chnet"
    raise ConversionError(
        "not a checkpoint of the authors' ConDSeg, MSNet/M2SNet or CHNet code: expected keys "
        "such as 'cdfa1.*' (ConDSeg), 'head.conv_fuse.*' (Net_0), 'backbone.*' (PVT), "
        "'x5_x4_x3_x2_x1.*' (MSNet, with 'conv_3.*' M2SNet) or 'tf1.*' (CHNet)"
    )


def rename_key(key: str, model: str = "condseg") -> str:
    """One of the authors' (non-backbone) key names of ``model`` in ours."""
    for pattern, replacement in _RULES[model]:
        key = re.sub(pattern, replacement, key)
    return key


def convert_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """(model name, state dict in our key names) for one of the authors' state dicts."""
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    name = detect_architecture(state)
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    out = {rename_key(k, name): v for k, v in state.items()
           if not k.startswith("backbone.") and not _UNUSED.match(k)}
    if backbone:  # their PVT keys are the original repository's: timm knows the renaming
        for k, v in pvt_filter(backbone, None).items():
            out["encoder." + re.sub(r"^stages\.(\d)", r"stages_\1", k)] = v
    return name, out


def load_official(path: str | Path) -> SegmentationModel:
    """Build our model and load one of the authors' ``.pth`` checkpoints into it (strictly)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"checkpoint not found: {path}")
    if not is_torch_file(path):
        raise ConversionError(f"{path} is not a PyTorch checkpoint of the authors' code (it looks "
                              f"like {file_kind(path)}); pass their .pth file")
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
    problem = _not_a_state_dict(state)
    if problem:
        raise ConversionError(f"{path}: {problem}; only plain state dicts (parameter name -> "
                              "tensor) of the authors' code are imported")
    try:
        name, converted = convert_state_dict(state)
    except ConversionError as error:
        raise ConversionError(f"{path}: {error}") from error
    model = create_model(name)
    expected = model.state_dict()
    problems = {
        "missing": [k for k in expected if k not in converted],
        "unexpected": [k for k in converted if k not in expected],
        "of another shape": [f"{k} {list(v.shape)} (ours {list(expected[k].shape)})"
                             for k, v in converted.items()
                             if k in expected and v.shape != expected[k].shape],
    }
    found = "; ".join(f"{kind}: {', '.join(keys[:3])}" for kind, keys in problems.items() if keys)
    if found:
        raise ConversionError(f"{path}: does not match our {name!r} architecture ({found})")
    bad = first_non_finite(converted)
    if bad is not None:
        raise ConversionError(f"{path}: tensor {bad!r} holds NaN or infinite values (a diverged "
                              "training?); import a checkpoint of a finished training")
    model.load_state_dict(converted)
    return model.eval()


def _not_a_state_dict(state: object) -> str | None:
    """What makes ``state`` something other than a non-empty mapping of names to tensors."""
    if not isinstance(state, Mapping):
        return f"expected a state dict, found {type(state).__name__}"
    if not state:
        return "the state dict is empty"
    for key, value in state.items():
        if not isinstance(key, str):
            return f"key {key!r} is a {type(key).__name__}, not a parameter name"
        if not isinstance(value, torch.Tensor):
            return f"{key!r} holds a {type(value).__name__}, not a tensor"
    return None


def convert_official(
    checkpoint: str | Path, out: str | Path, size: int | None = None, overwrite: bool = False
) -> tuple[SegmentationModel, Path]:
    """Import ``checkpoint`` (:func:`load_official`) and write our model file ``out`` with the
    normalisation of the authors' code and ``size`` (None: their recipe's training size); an
    existing ``out`` is refused before anything is read, unless ``overwrite``."""
    refuse_existing([Path(out)], overwrite)
    model = load_official(checkpoint)
    name = model.name
    mean, std = _NORMALIZATION.get(name, (None, None))
    path = save_model(out, model, mean=mean, std=std, input_size=size or _INPUT_SIZE.get(name, 256),
                      overwrite=overwrite)
    return model, path
