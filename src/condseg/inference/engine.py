"""The inference engine: a loaded model prepared once for fast inference on one device.

:func:`prepare` returns a *copy* of the model (the same model file serves every path):

- **fast path** (default): the modules' fast kernels, BatchNorm folded into the convolutions
  that feed it (:mod:`condseg.models.fusion`), channels_last, and autocast — bf16 on a CPU
  with native bf16 (AVX512-BF16 or AMX; elsewhere bf16 is emulated and slower, so float32),
  bf16 on a CUDA GPU that has it, else fp16 — optionally ``torch.compile``;
- **plain path** (``plain=True``): the reference — float32, NCHW, no folding, every module's
  plain implementation (:func:`~condseg.models.base.use_plain_kernels`).

The prepared model is a :class:`~condseg.models.base.WrappedModel`, so test-time augmentation,
sliding windows and :func:`~condseg.models.base.probabilities` (float32, on the CPU) take it like
any model.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from condseg.errors import ExecutionError, ModelError
from condseg.models.base import (
    ModelOutput,
    SegmentationModel,
    WrappedModel,
    require_model,
    use_plain_kernels,
)
from condseg.models.fusion import fold_batchnorm

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
DEVICES = "auto, cpu, cuda or cuda:N"


def cpu_supports_bf16() -> bool:
    """Whether oneDNN has native bf16 instructions; without them bf16 is emulated and slower."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@dataclass(frozen=True)
class Execution:
    """Where and how the network runs: ``device`` (auto = the first CUDA GPU if torch sees
    one, else the CPU), ``precision`` (auto = bf16/fp16 autocast where the hardware runs it
    natively, see the module docstring), ``plain`` (the float32 NCHW reference path),
    ``compile`` (``torch.compile`` the prepared network). Checked when built."""

    device: str = "auto"
    precision: str = "auto"
    plain: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        self.torch_device()
        self.autocast_dtype()
        if self.plain and self.compile:
            raise ExecutionError("the plain path is the uncompiled reference; drop --plain or "
                                 "--compile")

    def torch_device(self) -> torch.device:
        name = self.device.strip().lower()
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if name == "cpu":
            return torch.device("cpu")
        match = re.fullmatch(r"cuda(?::(\d+))?", name)
        if match is None:
            raise ExecutionError(f"device must be {DEVICES}; got {self.device!r}")
        if not torch.cuda.is_available():
            raise ExecutionError(f"device {self.device!r}: torch sees no CUDA GPU on this "
                                 "machine; use --device cpu (or auto)")
        index = int(match.group(1) or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ExecutionError(f"device {self.device!r} does not exist: torch sees {count} "
                                 f"CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return torch.device("cuda", index)

    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for float32."""
        if self.precision not in PRECISIONS:
            raise ExecutionError(f"precision must be one of {', '.join(PRECISIONS)}; got "
                                 f"{self.precision!r}")
        if self.plain and self.precision not in ("auto", "float32"):
            raise ExecutionError("the plain path is the float32 reference; drop --plain or use "
                                 "--precision float32")
        cuda = self.torch_device().type == "cuda"
        if self.precision == "float32" or self.plain:
            return None
        if self.precision == "auto":
            if cuda:
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.bfloat16 if cpu_supports_bf16() else None
        if self.precision == "float16" and not cuda:
            raise ExecutionError("float16 autocast is for CUDA GPUs; on the CPU use --precision "
                                 "bfloat16 or float32")
        if self.precision == "bfloat16" and cuda and not torch.cuda.is_bf16_supported():
            raise ExecutionError("this GPU has no bfloat16; use --precision float16 or auto")
        return torch.bfloat16 if self.precision == "bfloat16" else torch.float16

    def record(self) -> dict[str, object]:
        """What actually runs, resolved (evaluation protocols record it)."""
        dtype = self.autocast_dtype()
        return {
            "path": "plain" if self.plain else "fast",
            "device": str(self.torch_device()),
            "precision": str(dtype or torch.float32).removeprefix("torch."),
            "memory_format": "NCHW" if self.plain else "channels_last",
            "compile": self.compile,
        }


class PreparedModel(WrappedModel):
    """A prepared copy of a model (:func:`prepare`): moves each input to its device and memory
    format and runs the network under its autocast. Outputs may be bf16/fp16 logits;
    :func:`~condseg.models.base.probabilities` returns float32 on the CPU.

    On the fast path the first call finishes the preparation on the first image of its batch:
    the BatchNorms are folded (a probe of the size the model really runs at, so a model that
    takes only certain sizes is probed with one), then the network is compiled if asked. It
    checks its inputs itself, since it runs the inner model's ``forward`` directly."""

    checks_input = True

    def __init__(
        self, model: SegmentationModel, execution: Execution, dropped_maps: tuple[str, ...] = ()
    ) -> None:
        super().__init__(model)
        self.execution = execution
        self.dropped_maps = dropped_maps  # map_names the copy does not compute
        self.device = execution.torch_device()
        self.dtype = execution.autocast_dtype()
        self.memory_format = (torch.contiguous_format if execution.plain
                              else torch.channels_last)
        self.folded: int | None = 0 if execution.plain else None  # None: not yet
        self._run: Callable[[Tensor], ModelOutput] | None = (
            model.forward if execution.plain else None
        )

    def forward(self, x: Tensor) -> ModelOutput:
        x = x.to(self.device, memory_format=self.memory_format)
        if self._run is None:
            self._finish(x[:1])
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self._run(x)  # type: ignore[misc]

    def _finish(self, example: Tensor) -> None:
        with torch.inference_mode(False):
            has_batchnorm = any(isinstance(m, torch.nn.BatchNorm2d) for m in self.model.modules())
            self.folded = fold_batchnorm(self.model, example.clone()) if has_batchnorm else 0
            self.model.to(memory_format=self.memory_format)
        forward = self.model.forward
        self._run = torch.compile(forward) if self.execution.compile else forward

    def record(self) -> dict[str, object]:
        return {**self.execution.record(), "batchnorm_folded": self.folded}


def prepare(
    model: SegmentationModel, execution: Execution | None = None, *, maps: bool | None = None
) -> PreparedModel:
    """A copy of ``model`` prepared for ``execution`` (default: the fast path on the default
    device); a model prepared already is returned as it is. With ``maps=False`` the fast path
    returns the mask alone and every model inside skips the heads of its ``map_names``
    (ConDSeg's three SID heads are 16 % of its arithmetic); ``None`` keeps the maps of a new
    copy and takes a prepared one as it is; ``True`` requires them. The plain path always runs
    the network as written."""
    if isinstance(model, PreparedModel):
        if execution not in (None, model.execution):
            raise ModelError(f"the model is prepared for {model.execution} already; prepare "
                             f"the original model for {execution}")
        if maps and model.dropped_maps:
            raise ModelError("the model was prepared without its maps (maps=False); prepare "
                             "the original model with maps=True")
        return model
    execution = execution or Execution()
    net = copy.deepcopy(require_model(model)).eval()
    use_plain_kernels(net, execution.plain)
    dropped = () if maps is not False or execution.plain else net.map_names
    if dropped:
        for inner in net.modules():  # ensemble members and wrapped models too
            if isinstance(inner, SegmentationModel):
                inner.map_names = ()
    net.to(execution.torch_device())
    return PreparedModel(net, execution, dropped)
