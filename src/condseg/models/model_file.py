"""Model files for sharing: one ``.safetensors`` file with a JSON header.

The header (safetensors metadata key ``"condseg"``) holds everything needed to rebuild and use
the network — architecture, input normalisation, input size, and for a model of K >= 2 classes
their names (``"classes"``, background first; K is ``arch.options.num_classes``) — so a model
file is self-describing, and loading it never unpickles anything (safetensors stores raw
tensors only).
"""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model as _load_weights
from safetensors.torch import save_model as _save_weights

from condseg.errors import InputNotFoundError, ModelFileError, OutputExistsError, first_line
from condseg.filekind import file_kind, refuse_special
from condseg.files import atomic_file
from condseg.models.base import (
    MAX_CLASSES,
    MAX_INPUT_SIDE,
    SegmentationModel,
    class_names,
    require_model,
)

META_KEY = "condseg"
FORMAT_VERSION = 1
#: Bounds of a header: its JSON text (a run's whole config is a few kB) and its nesting (the
#: config's is below 10), so that a forged header cannot make parsing it costly.
MAX_HEADER_CHARS = 1_000_000
MAX_HEADER_DEPTH = 32
#: In an option string these make timm or smp look elsewhere than their built-in encoders:
#: ``hf-hub:``/``hf_hub:``/``local-dir:`` prefixes, URLs and file paths.
_SOURCE_MARKS = re.compile(r"[:/\\]")
#: Lists and strings of a forged header cut short in messages.
_SHORT = reprlib.Repr()
_SHORT.maxlist, _SHORT.maxstring, _SHORT.maxother = 8, 40, 40
#: What a model file is, for the messages refusing anything else.
MODEL_FILE = ("a model file is a .safetensors file with a condseg JSON header, written by "
              "`condseg train` (RUN/<stage>/model.safetensors), `condseg cv`, "
              "`condseg convert-official` or condseg.save_model")


def save_model(
    path: str | Path,
    model: SegmentationModel,
    *,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    input_size: int | Sequence[int],
    metrics: Mapping[str, Any] | None = None,
    config: Any = None,
    overwrite: bool = False,
    classes: Sequence[str] | None = None,
) -> Path:
    """Write ``model`` (parameters and buffers) and its header to ``path``.

    ``mean``/``std`` None means images are only scaled to [0, 1] (as in the authors' code).
    ``classes`` names the classes of a model of K >= 2 (default: :func:`class_names`, its own
    model file's or ``background, class1, ...``); a binary model takes none.
    ``config`` may be a mapping or a pydantic model (dumped to JSON). The file is written to a
    temporary name first and renamed, so an interrupted save never leaves a truncated file.
    """
    from condseg import __version__

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to "
                                "replace it")
    arch = require_model(model).arch
    if not isinstance(arch, Mapping) or "name" not in arch:
        raise ModelFileError(
            f"cannot save to {path}: the model has no `arch` attribute "
            "({'name': ..., 'options': {...}}); build it with condseg.create_model"
        )
    bad = first_non_finite(model.state_dict())
    if bad is not None:
        raise ModelFileError(f"cannot save {path}: the model's tensor {bad!r} holds NaN or "
                             "infinite values (a diverged training?); save a finite model")
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    if classes is None:
        classes = class_names(model)
    names = list(classes) if classes is not None else None
    problem = classes_problem(names, model.num_classes)
    if problem:
        raise ModelFileError(f"cannot save {path}: {problem}")
    header = {
        "format_version": FORMAT_VERSION,
        "arch": {"name": arch["name"], "options": dict(arch.get("options", {}))},
        "mean": _floats(mean),
        "std": _floats(std),
        "input_size": _size_pair(input_size),
        **({"classes": names} if names is not None else {}),
        "version": __version__,
        "metrics": dict(metrics) if metrics is not None else None,
        "config": config,
    }
    text = json.dumps(header, default=_json_scalar)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        try:
            _save_weights(model, tmp, metadata={META_KEY: text}, force_contiguous=True)
        except SafetensorError as error:  # a failed write, an OSError in all but its type
            code = re.search(r"\(os error (\d+)\)", str(error))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1]))) from error
    return path


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a model file, validated, without reading the weights.

    The header comes from a file that may have been forged: every field that rebuilding the
    model uses is checked here (:func:`validate_header`) so that a bad one is one
    :class:`ModelFileError` naming the file, never a traceback from deep inside a model.
    """
    path = Path(path)
    refuse_special(path, "model file", ModelFileError,
                   f"give the model file itself ({MODEL_FILE})")
    if not path.is_file():
        raise InputNotFoundError(
            f"model file {path} not found; pass the path of a .safetensors file written by "
            "`condseg train` or condseg.save_model"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(
            f"{path} is not a safetensors file or is truncated (it looks like "
            f"{file_kind(path)}; {first_line(exc)}): {MODEL_FILE}. Lightning .ckpt files are "
            "not model files; the authors' .pth checkpoints are imported with "
            "`condseg convert-official`"
        ) from exc
    if META_KEY not in metadata:
        raise ModelFileError(
            f"{path} is a safetensors file without a condseg header; it was not written by "
            f"condseg ({MODEL_FILE}; authors' checkpoints: use `condseg convert-official`)"
        )
    text = metadata[META_KEY]
    if len(text) > MAX_HEADER_CHARS:
        raise ModelFileError(f"{path}: the condseg header has {len(text):,} characters, more "
                             f"than a model file's ({MAX_HEADER_CHARS:,} at most); it is forged "
                             "or damaged — use the file its author wrote")
    try:
        header = json.loads(text)
    except RecursionError as exc:
        raise ModelFileError(f"{path}: the condseg header is nested more than "
                             f"{MAX_HEADER_DEPTH} levels deep; it is forged or damaged") from exc
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: the condseg header is not valid JSON ({exc})") from exc
    problem = validate_header(header)
    if problem:
        raise ModelFileError(f"{path}: bad condseg header: {problem}")
    return header


def validate_header(header: Any) -> str | None:
    """What is wrong with a model-file header, or None: the format version, the architecture
    (a name and options that are JSON scalars or lists of them), the input size (two positive
    ints up to :data:`MAX_INPUT_SIDE`), the normalisation (null, or 3 finite numbers each,
    std > 0) and the classes (:func:`classes_problem`). Whether the architecture is known and
    matches the weights is :func:`load_model`'s check."""
    if not isinstance(header, dict):
        return f"expected a JSON object, found {type(header).__name__}"
    if _depth(header) > MAX_HEADER_DEPTH:
        return f"it is nested more than {MAX_HEADER_DEPTH} levels deep"
    required = ("format_version", "arch", "mean", "std", "input_size")
    missing = [k for k in required if k not in header]
    if missing:
        return f"lacks {missing}"
    version, arch, size = header["format_version"], header["arch"], header["input_size"]
    if not _is_int(version) or version < 1:
        return f"format_version must be a positive int, got {version!r}"
    if version > FORMAT_VERSION:
        return (f"it uses model-file format {version}, newer than this condseg reads "
                f"({FORMAT_VERSION}); upgrade condseg")
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        return f"arch must be an object with a name, got {arch!r}"
    options = arch.get("options", {})
    if not isinstance(options, dict) or not _is_plain(options):
        return (f"arch.options must be a JSON object of numbers, strings, booleans, lists and "
                f"objects: {options!r}")
    if _names_weights(options):
        return "arch.options may not name pretrained or weights (nothing is downloaded or read)"
    source = _names_source(options, "arch.options")
    if source:
        return (f"{source} names a hub, URL or path; a model file may only name built-in "
                "encoders (nothing is downloaded or read)")
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(_is_int(v) and 0 < v <= MAX_INPUT_SIDE for v in size)
    ):
        return f"input_size must be [H, W], ints from 1 to {MAX_INPUT_SIDE}, got {size!r}"
    mean, std = header["mean"], header["std"]
    if (mean is None) != (std is None):
        return "mean and std must both be null or both be given"
    for key, values in (("mean", mean), ("std", std)):
        if values is not None and not (
            isinstance(values, list)
            and len(values) == 3
            and all(_is_number(v) and math.isfinite(v) for v in values)
        ):
            return f"{key} must be null or 3 finite numbers, got {values!r}"
    if std is not None and min(std) <= 0:
        return f"std must be positive, got {std!r}"
    for key in ("metrics", "config"):
        if not isinstance(header.get(key), dict | None):
            return f"{key} must be null or a JSON object, got {type(header[key]).__name__}"
    num_classes = options.get("num_classes", 1)
    if not _is_int(num_classes) or not 1 <= num_classes <= MAX_CLASSES:
        return (f"arch.options.num_classes must be an int from 1 to {MAX_CLASSES}, got "
                f"{_short(num_classes)}")
    return classes_problem(header.get("classes"), num_classes)


def classes_problem(classes: Any, num_classes: int) -> str | None:
    """What is wrong with the class names of a model of ``num_classes``, or None: none for a
    binary model, else a list of ``num_classes`` distinct names, background first, each a
    valid dataset class name (:func:`condseg.data.labels.class_name_problem`)."""
    if num_classes == 1:
        return None if classes is None else (
            f"a binary model (num_classes 1) has no class names, got {_short(classes)}")
    if (not isinstance(classes, list) or len(classes) != num_classes
            or not all(isinstance(name, str) for name in classes)):
        return (f"classes must list the names of the model's {num_classes} classes "
                f"(num_classes), background first, got {_short(classes)}")
    from condseg.data.labels import class_name_problem  # the datasets' rule (data is lower)

    for name in classes:
        if problem := class_name_problem(name):
            return problem
    if len(set(classes)) != len(classes):
        return f"class names must be distinct, got {_short(classes)}"
    return None


def _short(value: Any) -> str:
    """A value for a one-line message, however long a forged header made it."""
    return _SHORT.repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_plain(value: Any, depth: int = 0) -> bool:
    """A JSON scalar, or a list or string-keyed object of plain values, nested at most 6 deep
    (what model options are; an ensemble's options list its members' architectures)."""
    if depth > 6:
        return False
    if isinstance(value, list):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    return value is None or isinstance(value, (str, int, float, bool))


def _depth(value: Any) -> int:
    """How many levels of lists and objects nest in a parsed JSON value, counted up to one
    beyond :data:`MAX_HEADER_DEPTH` (iteratively: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            if depth <= MAX_HEADER_DEPTH:
                stack.extend((child, depth + 1) for child in item)
    return deepest


def _names_source(value: Any, where: str) -> str | None:
    """The first option (as ``where.key=value``) whose string names a hub, URL or path."""
    if isinstance(value, str):
        return f"{where}={value!r}" if _SOURCE_MARKS.search(value) else None
    if isinstance(value, dict):
        children = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        return None
    for key, child in children:
        found = _names_source(child, f"{where}.{key}")
        if found:
            return found
    return None


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _names_weights(value: Any) -> bool:
    """Whether options at any depth ask for ImageNet weights (a download or a file read)."""
    if isinstance(value, list):
        return any(map(_names_weights, value))
    if isinstance(value, dict):
        return bool({"pretrained", "weights"} & set(value)) or any(
            map(_names_weights, value.values()))
    return False


def load_model(path: str | Path, device: str | torch.device = "cpu") -> SegmentationModel:
    """Rebuild the network described by the header and load its weights strictly.

    Before anything is allocated, the header is validated and the network is built on the
    ``meta`` device (shapes only, no memory) and compared with the tensors the file stores, so
    that a forged header cannot make us allocate more than the file holds. The returned model
    is in eval mode and carries the header as ``model.meta`` (plus ``path``, the file's
    absolute path; ``classes`` for a model of classes).
    """
    from condseg.models.registry import create_model, list_models

    header = read_header(path)
    name, options = header["arch"]["name"], header["arch"].get("options", {})
    if name not in list_models():
        raise ModelFileError(
            f"{path}: unknown architecture {name!r}; this condseg version knows "
            f"{', '.join(sorted(list_models()))} — upgrade condseg or use the version that wrote it"
        )
    _check_shapes(path, name, options)
    model = create_model(name, pretrained=False, **options)
    try:
        _load_weights(model, str(path), strict=True, device=str(device))
    except (RuntimeError, SafetensorError) as exc:
        raise ModelFileError(
            f"{path}: the weights do not match architecture {name!r} "
            f"with options {options} ({first_line(exc)})"
        ) from exc
    bad = first_non_finite(model.state_dict())
    if bad is not None:
        raise ModelFileError(f"{path}: tensor {bad!r} holds NaN or infinite values, so every "
                             "prediction would be wrong; the file is damaged or was saved from "
                             "a diverged training — use another model file")
    model.to(device)
    model.meta = {**header, "path": str(Path(path).resolve())}
    return model.eval()


def _check_shapes(path: str | Path, name: str, options: dict[str, Any]) -> None:
    """Refuse a file whose tensors are not exactly those of ``name`` built with ``options``.

    The network is built on the meta device, so options that would describe an enormous
    network cost nothing here. Tied tensors (one tensor under two names) count as present
    when the file has either name, as safetensors stores them once.
    """
    from condseg.models.registry import create_model

    try:
        with torch.device("meta"):
            expected = create_model(name, **options).state_dict(keep_vars=True)
    except Exception as exc:  # the header is untrusted input: any failure to build is its fault
        raise ModelFileError(
            f"{path}: architecture {name!r} cannot be built with the header's options "
            f"{options} ({first_line(exc)})"
        ) from exc
    with safe_open(str(path), framework="pt") as f:
        stored = {key: list(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    covered = {id(expected[k]) for k in stored if k in expected}
    problems = {
        "missing": [k for k, t in expected.items() if id(t) not in covered],
        "unexpected": [k for k in stored if k not in expected],
        "of another shape": [k for k in stored
                             if k in expected and list(expected[k].shape) != stored[k]],
    }
    found = "; ".join(f"{kind}: {', '.join(keys[:3])}" for kind, keys in problems.items() if keys)
    if found:
        raise ModelFileError(
            f"{path}: the weights do not match architecture {name!r} with options {options} "
            f"({found})"
        )


def _size_pair(size: int | Sequence[int]) -> list[int]:
    """Input sizes are stored as [H, W]; a single int means a square input."""
    pair = [int(size), int(size)] if isinstance(size, int) else [int(v) for v in size]
    if len(pair) != 2 or not all(0 < v <= MAX_INPUT_SIDE for v in pair):
        raise ModelFileError(
            f"input_size must be an int or (H, W), from 1 to {MAX_INPUT_SIDE}, got {size!r}"
        )
    return pair


def _floats(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _json_scalar(value: Any) -> Any:
    """Let numpy/torch scalars (as metric values usually are) go into the JSON header."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
