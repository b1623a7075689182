"""condseg: ConDSeg and related 2-D binary medical image segmentation methods.

Public API: :func:`create_model`, :func:`list_models`, :func:`load_model`, :func:`predict`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from condseg.inference.model_file import load_model, save_model
from condseg.inference.predict import predict
from condseg.models.registry import create_model, list_models

__all__ = ["__version__", "create_model", "list_models", "load_model", "predict", "save_model"]
