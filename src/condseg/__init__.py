"""condseg: ConDSeg and related 2-D binary medical image segmentation methods.

Public API: :func:`create_model`, :func:`list_models`, :func:`load_model`, :func:`save_model`,
:func:`predict` and :func:`predict_files` (with :class:`InferenceOptions`; :func:`prepare` and
:class:`Execution`: the inference engine's fast or plain path on a device), :func:`evaluate`,
:func:`export_onnx`, :func:`convert_official`, :func:`load_config`, :func:`train`,
:func:`cross_validate`, the errors (:class:`CondsegError`, the base of every error a user can
fix, and :class:`ModelError`, a model or input size that does not fit), and the seams a new
method plugs into: :class:`SegmentationModel` / :class:`ModelOutput` with
:func:`register_model`, :class:`Loss` with :func:`register_loss`, and :func:`register_method`
(docs/architecture.md, "Adding a method").
Imported lazily so that ``import condseg`` (and the CLI's start) stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "create_model": "condseg.models.registry",
    "list_models": "condseg.models.registry",
    "register_model": "condseg.models.registry",
    "SegmentationModel": "condseg.models.base",
    "ModelOutput": "condseg.models.base",
    "load_model": "condseg.models.model_file",
    "save_model": "condseg.models.model_file",
    "predict": "condseg.inference.predict",
    "predict_files": "condseg.inference.predict",
    "evaluate": "condseg.evaluation.evaluate",
    "export_onnx": "condseg.inference.export",
    "convert_official": "condseg.convert",
    "InferenceOptions": "condseg.inference.options",
    "prepare": "condseg.inference.engine",
    "Execution": "condseg.inference.engine",
    "Loss": "condseg.losses.base",
    "register_loss": "condseg.losses.base",
    "register_method": "condseg.recipes",
    "load_config": "condseg.config",
    "train": "condseg.training.run",
    "cross_validate": "condseg.training.cv",
    "CondsegError": "condseg.errors",
    "ModelError": "condseg.errors",
}

__all__ = ["__version__", *_API]


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'condseg' has no attribute {name!r}")
