"""ONNX export, verified against PyTorch with onnxruntime.

The exported graph takes the normalised image (B, 3, H, W) — normalisation stays outside, as
for the PyTorch model — and returns logits: ``mask``, plus ``fg``, ``bg``, ``uc`` for ConDSeg.
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

from condseg.inference.predict import eval_mode, forward_probs, model_input_size, refuse_existing

DEFAULT_OPSET = 18


@dataclass
class ExportReport:
    """The written file, its output names and the largest |onnxruntime − PyTorch| logit gap."""

    path: Path
    outputs: list[str]
    max_abs_diff: float | None


class _LogitsOnly(nn.Module):
    """Turns the model's output (tensor or ConDSegOutput) into a flat tuple of logits.

    It takes the model's train/eval mode, so restoring the wrapper's mode after export
    restores the model's.
    """

    def __init__(self, model: nn.Module, outputs: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.outputs = tuple(outputs)
        self.train(model.training)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from condseg.models.registry import mask_logits

        out = self.model(image)
        return tuple(
            mask_logits(out) if key == "mask" else getattr(out, key) for key in self.outputs
        )


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: int | Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
    *,
    verify: bool = True,
    tolerance: float = 1e-3,
    overwrite: bool = False,
) -> ExportReport:
    """Export ``model`` to ONNX at ``input_size`` (default: the model file's) and check it.

    With ``verify`` the graph is run by onnxruntime on a random batch of two and compared with
    PyTorch; the maximum absolute difference of the logits is returned in the report. A file
    whose difference exceeds ``tolerance`` is deleted and an error raised, so a wrong graph is
    never left behind. Height and width are fixed at ``input_size``; only the batch is dynamic.
    """
    path = Path(path)
    refuse_existing([path], overwrite)
    height, width = model_input_size(model, input_size)
    sample = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    with eval_mode(model):
        outputs = list(forward_probs(model, sample[:1]))
    wrapper = _LogitsOnly(model, outputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch"} for name in ["image", *outputs]}
    options = (
        {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    )
    if opset >= 18:  # below 18 torch's own error (Col2Im needs opset 18) is the right message
        torch.onnx.register_custom_op_symbolic("aten::col2im", _col2im, opset)
    try:
        with eval_mode(wrapper, inference=False), warnings.catch_warnings():
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
        raise RuntimeError(
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
