"""ONNX export, verified against PyTorch with onnxruntime.

The exported graph takes the normalised image (B, 3, H, W) — normalisation stays outside, as
for the PyTorch model — and returns logits: ``mask``, plus the model's ``map_names`` (``fg``,
``bg``, ``uc`` for ConDSeg). Training-only auxiliary outputs are not part of the graph.
The batch axis is dynamic. The TorchScript exporter is used (``dynamo=False``): the dynamo
exporter needs ``onnxscript``, which is not a dependency. CDFA's ``fold`` becomes ONNX
``Col2Im``, which exists from opset 18 on, hence the default opset.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.onnx import symbolic_helper

from condseg.errors import CondsegError, refuse_existing
from condseg.models.base import (
    SegmentationModel,
    eval_mode,
    input_size,
    plain_kernels,
    require_model,
)

DEFAULT_OPSET = 18


@dataclass
class ExportReport:
    """The written file, its output names and the largest |onnxruntime − PyTorch| logit gap."""

    path: Path
    outputs: list[str]
    max_abs_diff: float | None


class ExportError(CondsegError):
    """The exported graph disagrees with PyTorch."""


class _LogitsOnly(nn.Module):
    """The model's output as a flat tuple of logits: the mask, then its ``map_names``.

    It takes the model's train/eval mode, so restoring the wrapper's mode after export
    restores the model's.
    """

    def __init__(self, model: SegmentationModel) -> None:
        super().__init__()
        self.model = model
        self.outputs = ("mask", *model.map_names)
        self.train(model.training)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(image)
        return (out.mask, *(out.aux[key] for key in self.model.map_names))


def export_onnx(
    model: SegmentationModel,
    path: str | Path,
    size: int | Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
    *,
    verify: bool = True,
    tolerance: float = 1e-3,
    overwrite: bool = False,
) -> ExportReport:
    """Export ``model`` to ONNX at ``size`` (default: the model file's input size), checked.

    With ``verify`` the graph is run by onnxruntime on a random batch of two and compared with
    PyTorch; the maximum absolute difference of the logits is returned in the report. A file
    whose difference exceeds ``tolerance`` is deleted and an error raised, so a wrong graph is
    never left behind. Height and width are fixed at ``size``; only the batch is dynamic.
    """
    path = Path(path)
    refuse_existing([path], overwrite)
    height, width = input_size(require_model(model), size)
    sample = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    wrapper = _LogitsOnly(model)
    outputs = list(wrapper.outputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch"} for name in ["image", *outputs]}
    options = (
        {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    )
    if opset >= 18:  # below 18 torch's own error (Col2Im needs opset 18) is the right message
        torch.onnx.register_custom_op_symbolic("aten::col2im", _col2im, opset)
    try:
        with (eval_mode(wrapper, inference=False), plain_kernels(wrapper),
              warnings.catch_warnings()):
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # H, W are fixed anyway
            torch.onnx.export(
                wrapper,
                (sample,),
                str(path),
                input_names=["image"],
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=opset,
                **options,
            )
    finally:
        if opset >= 18:
            torch.onnx.unregister_custom_op_symbolic("aten::col2im", opset)
    diff = _verify(wrapper, path, sample, outputs) if verify else None
    if diff is not None and not diff <= tolerance:
        path.unlink()
        raise ExportError(
            f"ONNX export of {path.name} disagrees with PyTorch (max |diff| {diff:.3g} > "
            f"{tolerance:g}); the file was removed — try another opset or report the model"
        )
    return ExportReport(path=path, outputs=outputs, max_abs_diff=diff)


def _verify(wrapper: nn.Module, path: Path, sample: torch.Tensor, outputs: list[str]) -> float:
    """Largest absolute logit difference between onnxruntime and PyTorch on ``sample``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(outputs, {"image": sample.numpy()})
    with eval_mode(wrapper):
        expected = [t.float().cpu().numpy() for t in wrapper(sample)]
    return max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))


@symbolic_helper.parse_args("v", "v", "v", "is", "is", "is")
def _col2im(g, cols, output_size, kernel_size, dilation, padding, stride):
    """``aten::col2im`` (``F.fold``) → ONNX Col2Im with a runtime output size.

    torch's own symbolic needs the output size as a constant, which tracing cannot give when
    the model takes it from the input's shape. ONNX pads are all begins, then all ends.
    """
    return g.op(
        "Col2Im",
        cols,
        output_size,
        kernel_size,
        dilations_i=dilation,
        pads_i=list(padding) * 2,
        strides_i=stride,
    )
