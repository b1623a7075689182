"""Import of checkpoints trained with the authors' code of a packaged method (ConDSeg with Net_0
and the PVT variant, MSNet, M2SNet, CHNet).

Their ``.pth`` files are plain state dicts (possibly under ``state_dict`` or with DataParallel's
``module.`` prefix); we read them with ``weights_only=True`` (nothing is unpickled), recognise
the architecture from the keys and rename them to ours with the rules each family registers
(:mod:`condseg.models.converters`). The model file written keeps the normalisation of the
authors' code (ConDSeg's divides by 255 only; MSNet's, also CHNet's, has its own mean/std).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from condseg.errors import ConversionError, InputNotFoundError, first_line, refuse_existing
from condseg.filekind import file_kind, is_torch_file, refuse_special
from condseg.models.base import SegmentationModel
from condseg.models.converters import CONVERTERS, Converter
from condseg.models.model_file import first_non_finite, save_model
from condseg.models.registry import create_model


def detect_architecture(keys: list[str] | Mapping[str, object]) -> str:
    """Our model name for a state dict in the authors' key names."""
    names = list(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in names)

    converters = [entry.item for entry in CONVERTERS.entries().values()]
    for converter in converters:
        model = converter.identify(has)
        if model is not None:
            return model
    raise ConversionError(
        f"not a checkpoint of the authors' {_either(c.title for c in converters)} code: "
        f"expected keys such as {_either(c.signature for c in converters)}"
    )


def rename_key(key: str, model: str = "condseg") -> str:
    """One of the authors' (non-backbone) key names of ``model`` in ours."""
    return converter_of(model).rename_key(key)


def converter_of(model: str) -> Converter:
    """The converter that produces ``model``."""
    for entry in CONVERTERS.entries().values():
        if model in entry.item.models:
            return entry.item
    raise ConversionError(f"no authors' checkpoints are imported into model {model!r}")


def _either(items: Iterable[str]) -> str:
    """The items as "a, b or c"."""
    *rest, last = items
    return f"{', '.join(rest)} or {last}" if rest else last


def convert_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """(model name, state dict in our key names) for one of the authors' state dicts."""
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    name = detect_architecture(state)
    return name, converter_of(name).convert(state)


def load_official(path: str | Path) -> SegmentationModel:
    """Build our model and load one of the authors' ``.pth`` checkpoints into it (strictly)."""
    path = Path(path)
    refuse_special(path, "checkpoint", ConversionError, "pass the authors' .pth file itself")
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
    converter = converter_of(model.name)
    path = save_model(out, model, mean=converter.mean, std=converter.std,
                      input_size=size or converter.input_size, overwrite=overwrite)
    return model, path
