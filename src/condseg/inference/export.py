"""ONNX export, verified against PyTorch with onnxruntime.

The exported graph takes the normalised image (B, 3, H, W) — normalisation stays outside, as
for the PyTorch model — and returns logits: ``mask``, plus the model's ``map_names`` (``fg``,
``bg``, ``uc`` for ConDSeg). Training-only auxiliary outputs are not part of the graph.
The batch axis is dynamic. The file's ``metadata_props`` carry what a deployment needs to
feed and read it without condseg — ``input_size``, ``mean``, ``std``, ``threshold``, ``model``,
``outputs``, ``preprocessing`` — and :func:`how_to_run` turns them into an onnxruntime snippet.
A K-class model's ``mask`` has K channels, and instead of ``threshold`` its metadata holds
``num_classes`` and ``classes`` (a JSON list of the names in id order, background first).
The TorchScript exporter is used (``dynamo=False``): the dynamo exporter needs ``onnxscript``,
which is not a dependency. CDFA's ``fold`` becomes ONNX ``Col2Im``, which exists from opset 18
on, hence the default opset. ``onnx`` and ``onnxruntime`` are the optional ``onnx`` extra.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.onnx import symbolic_helper

from condseg.errors import ExportError, first_line, refuse_existing
from condseg.files import atomic_file
from condseg.models.base import (
    SegmentationModel,
    class_names,
    eval_mode,
    input_size,
    normalization,
    plain_kernels,
    require_model,
)

DEFAULT_OPSET = 18
#: The opsets torch's TorchScript exporter writes (torch.onnx's ONNX_MIN_OPSET and
#: ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET); a model may need more (CDFA: 18).
OPSETS = range(7, 21)
INSTALL = 'pip install "condseg[onnx]"'


@dataclass
class ExportReport:
    """The written file, its output names and the largest |onnxruntime − PyTorch| logit gap."""

    path: Path
    outputs: list[str]
    max_abs_diff: float | None


def _require(*modules: str) -> None:
    """Refuse to start without the optional packages export needs (one line, how to get them)."""
    missing = []
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ExportError(f"ONNX export needs {' and '.join(modules)} (missing: "
                          f"{', '.join(missing)}); install them with {INSTALL}")


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
    PyTorch; the maximum absolute difference of the logits is returned in the report. A graph
    whose difference exceeds ``tolerance`` is not written and an error raised, so a wrong graph
    is never left behind (the file is staged beside ``path`` and renamed when checked). Height
    and width are fixed at ``size``; only the batch is dynamic.
    """
    path = Path(path)
    if not (isinstance(opset, int) and opset in OPSETS):
        raise ExportError(f"opset must be from {OPSETS.start} to {OPSETS.stop - 1} (the ONNX "
                          f"opsets torch exports; ConDSeg's CDFA needs 18 or more); got {opset!r}")
    _require("onnx", *(["onnxruntime"] if verify else []))
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
    with atomic_file(path) as tmp:  # a failed or wrong export leaves nothing
        try:
            with (eval_mode(wrapper, inference=False), plain_kernels(wrapper),
                  warnings.catch_warnings(), _stderr_dropped_on_error(path.parent)):
                warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # H, W are fixed anyway
                torch.onnx.export(
                    wrapper,
                    (sample,),
                    str(tmp),
                    input_names=["image"],
                    output_names=outputs,
                    dynamic_axes=axes,
                    opset_version=opset,
                    **options,
                )
        except torch.onnx.errors.OnnxExporterError as error:  # an operator the opset lacks
            raise ExportError(f"{model.name} cannot be exported at opset {opset} "
                              f"({first_line(error)}); try a higher opset, up to "
                              f"{OPSETS.stop - 1}") from error
        finally:
            if opset >= 18:
                torch.onnx.unregister_custom_op_symbolic("aten::col2im", opset)
        _finish_graph(tmp, model, (height, width))
        diff = _verify(wrapper, tmp, sample, outputs) if verify else None
        if diff is not None and not diff <= tolerance:
            raise ExportError(
                f"ONNX export of {path.name} disagrees with PyTorch (max |diff| {diff:.3g} > "
                f"{tolerance:g}); nothing was written — try another opset or report the model"
            )
    return ExportReport(path=path, outputs=outputs, max_abs_diff=diff)


@contextmanager
def _stderr_dropped_on_error(folder: Path) -> Iterator[None]:
    """Hold the process's stderr aside and pass it on unless the block fails: torch's exporter
    dumps its whole IR graph there (from C++) when the opset lacks an operator, thousands of
    lines above our one-line error. It is held in ``folder`` (the output's), not ``$TMPDIR``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(dir=folder) as held:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


def _finish_graph(path: Path, model: SegmentationModel, size: tuple[int, int]) -> None:
    """Name the outputs' axes (batch, C, H, W: the tracer names the traced H and W after
    whatever it derived them from; C is K for a K-class mask, else 1) and write into the file
    what feeding and reading it takes (see the module docstring)."""
    import onnx

    graph = onnx.load(str(path))
    outputs = [output.name for output in graph.graph.output]
    for output in graph.graph.output:
        batch, channels, height, width = output.type.tensor_type.shape.dim
        batch.dim_param = "batch"
        channels.dim_value = model.num_classes if output.name == "mask" else 1
        height.dim_value, width.dim_value = size
    mean, std = normalization(model)
    props = {
        "model": model.name,
        "input_size": json.dumps(list(size)),
        "mean": json.dumps(list(mean) if mean is not None else None),
        "std": json.dumps(list(std) if std is not None else None),
        "threshold": "0.5",
        "outputs": ",".join(outputs),
        "preprocessing": (
            f"RGB uint8 image resized to {size[0]}x{size[1]} (H x W; area when shrinking, "
            "bilinear when enlarging), divided by 255"
            + (", minus mean, divided by std" if mean is not None else "")
            + ", as float32 (B, 3, H, W)"),
        "postprocessing": "outputs are logits: sigmoid, then resize to the image's size; "
                          "mask = probability >= threshold",
    }
    names = class_names(model)
    if names is not None:
        del props["threshold"]
        props["num_classes"] = str(len(names))
        props["classes"] = json.dumps(list(names))
        props["postprocessing"] = ("outputs are logits; mask: softmax over its channels (the "
                                   "classes), resize the probabilities to the image's size, "
                                   "then the argmax is the class id (0: background)")
    if model.meta is not None:
        props["condseg_version"] = str(model.meta.get("version"))
    onnx.helper.set_model_props(graph, props)
    onnx.save(graph, str(path))


def how_to_run(path: str | Path) -> str:
    """A short onnxruntime program that predicts one image with the exported file, from the
    file's own metadata (so it is right for this file whatever its size and normalisation)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
             .metadata_props}
    height, width = json.loads(props["input_size"])
    mean, std = json.loads(props["mean"]), json.loads(props["std"])
    normalise = (f"x = (x - np.array({mean}, np.float32)) / np.array({std}, np.float32)\n"
                 if mean is not None else "")
    if "num_classes" in props:  # K maps: softmax, resized class by class, argmax
        reading = (
            "logits = session.run(['mask'], {'image': x.transpose(2, 0, 1)[None]})[0][0]\n"
            "e = np.exp(logits - logits.max(0))\n"
            "probability = (e / e.sum(0)).transpose(1, 2, 0)\n"
            "probability = cv2.resize(probability, image.shape[1::-1]).reshape("
            "*image.shape[:2], -1)\n"
            f"labels = probability.argmax(2)  # class ids: {json.loads(props['classes'])}")
    else:
        reading = (
            "logits = session.run(['mask'], {'image': x.transpose(2, 0, 1)[None]})[0][0, 0]\n"
            "probability = cv2.resize(1 / (1 + np.exp(-logits)), image.shape[1::-1])\n"
            f"mask = probability >= {props['threshold']}")
    return (
        "import cv2, numpy as np, onnxruntime\n"
        f"session = onnxruntime.InferenceSession({str(path)!r})\n"
        "image = cv2.cvtColor(cv2.imread('image.png'), cv2.COLOR_BGR2RGB)\n"
        f"shrink = image.shape[0] >= {height} and image.shape[1] >= {width}\n"
        f"x = cv2.resize(image, ({width}, {height}), interpolation=cv2.INTER_AREA if shrink "
        "else cv2.INTER_LINEAR).astype(np.float32) / 255\n"
        f"{normalise}{reading}"
    )


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
