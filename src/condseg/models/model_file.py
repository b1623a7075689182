"""Model files for sharing: one ``.safetensors`` file with a JSON header.

The header (safetensors metadata key ``"condseg"``) holds everything needed to rebuild and use
the network — architecture, input normalisation, input size — so a model file is
self-describing, and loading it never unpickles anything (safetensors stores raw tensors only).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model as _load_weights
from safetensors.torch import save_model as _save_weights

from condseg.errors import CondsegError, InputNotFoundError, OutputExistsError
from condseg.models.base import SegmentationModel, require_model

META_KEY = "condseg"
FORMAT_VERSION = 1


class ModelFileError(CondsegError):
    """A file that cannot be used as a condseg model file (the message names the file)."""


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
) -> Path:
    """Write ``model`` (parameters and buffers) and its header to ``path``.

    ``mean``/``std`` None means images are only scaled to [0, 1] (as in the authors' code).
    ``config`` may be a mapping or a pydantic model (dumped to JSON). The file is written to a
    temporary name first and renamed, so an interrupted save never leaves a truncated file.
    """
    from condseg import __version__

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass overwrite=True to replace it")
    arch = require_model(model).arch
    if not isinstance(arch, Mapping) or "name" not in arch:
        raise ModelFileError(
            f"cannot save to {path}: the model has no `arch` attribute "
            "({'name': ..., 'options': {...}}); build it with condseg.create_model"
        )
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    header = {
        "format_version": FORMAT_VERSION,
        "arch": {"name": arch["name"], "options": dict(arch.get("options", {}))},
        "mean": _floats(mean),
        "std": _floats(std),
        "input_size": _size_pair(input_size),
        "version": __version__,
        "metrics": dict(metrics) if metrics is not None else None,
        "config": config,
    }
    text = json.dumps(header, default=_json_scalar)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _save_weights(model, tmp, metadata={META_KEY: text}, force_contiguous=True)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a model file, without reading the weights."""
    path = Path(path)
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
            f"{path} is not a safetensors file ({exc}); pass a model file written by "
            "`condseg train` or condseg.save_model (Lightning .ckpt files are not model files)"
        ) from exc
    if META_KEY not in metadata:
        raise ModelFileError(
            f"{path} is a safetensors file without a condseg header; it was not written by "
            "condseg.save_model (authors' checkpoints: use `condseg convert-official`)"
        )
    try:
        header = json.loads(metadata[META_KEY])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: the condseg header is not valid JSON ({exc})") from exc
    missing = [
        k for k in ("format_version", "arch", "mean", "std", "input_size") if k not in header
    ]
    if missing or not isinstance(header.get("arch"), dict) or "name" not in header["arch"]:
        raise ModelFileError(f"{path}: the condseg header lacks {missing or ['arch.name']}")
    if header["format_version"] > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} uses model-file format {header['format_version']}, newer than this condseg "
            f"reads ({FORMAT_VERSION}); upgrade condseg"
        )
    return header


def load_model(path: str | Path, device: str | torch.device = "cpu") -> SegmentationModel:
    """Rebuild the network described by the header and load its weights strictly.

    The returned model is in eval mode and carries the header as ``model.meta`` (plus
    ``path``, the file's absolute path).
    """
    from condseg.models.registry import create_model, list_models

    header = read_header(path)
    name = header["arch"]["name"]
    if name not in list_models():
        raise ModelFileError(
            f"{path}: unknown architecture {name!r}; this condseg version knows "
            f"{', '.join(sorted(list_models()))} — upgrade condseg or use the version that wrote it"
        )
    model = create_model(name, pretrained=False, **header["arch"].get("options", {}))
    try:
        _load_weights(model, str(path), strict=True, device=str(device))
    except RuntimeError as exc:
        raise ModelFileError(
            f"{path}: the weights do not match architecture {name!r} "
            f"with options {header['arch'].get('options', {})} ({exc})"
        ) from exc
    model.to(device)
    model.meta = {**header, "path": str(Path(path).resolve())}
    return model.eval()


def _size_pair(size: int | Sequence[int]) -> list[int]:
    """Input sizes are stored as [H, W]; a single int means a square input."""
    pair = [int(size), int(size)] if isinstance(size, int) else [int(v) for v in size]
    if len(pair) != 2 or min(pair) <= 0:
        raise ModelFileError(f"input_size must be an int or (H, W) of positive ints, got {size!r}")
    return pair


def _floats(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _json_scalar(value: Any) -> Any:
    """Let numpy/torch scalars (as metric values usually are) go into the JSON header."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
