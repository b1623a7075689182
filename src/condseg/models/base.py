"""The model contract: what every registered model gives training, prediction, evaluation,
export and the benchmark, so that none of them special-cases a family.

A model is a :class:`SegmentationModel` that takes a normalised float tensor (B, 3, H, W), H and
W multiples of ``input_divisor``, and returns a :class:`ModelOutput`: the mask logits at the
input size plus named auxiliary outputs (ConDSeg's SID maps, a plug-in's features). Auxiliary
outputs listed in ``map_names`` are (B, 1, H, W) logit maps that prediction can write and export
can expose; the others are training-only.

``num_classes`` K says what the mask logits are: K = 1 is one map (binary, sigmoid), K >= 2 is
K maps, background first (softmax). A model that cannot take K >= 2 refuses at build time
(:func:`refuse_classes`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from condseg.errors import ModelError, NonFiniteOutputError

#: timm's IMAGENET_DEFAULT_MEAN/STD: the normalisation of a model whose encoder has no config.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Normalization = tuple[tuple[float, ...] | None, tuple[float, ...] | None]
#: Largest input side one may ask a model for (a model file's, export's): 8192 is far above any
#: training size and keeps a forged header or a typo from asking for a huge input.
MAX_INPUT_SIDE = 8192
#: Most classes a model takes: class ids 0..254, as 255 marks ignored pixels
#: (``condseg.data.labels.IGNORE_ID``; not imported, as importing ``condseg.data`` costs seconds).
MAX_CLASSES = 255


class ModelOutput(NamedTuple):
    """Mask logits (B, C, H, W), C = :func:`mask_channels` of the model's ``num_classes``, and
    named auxiliary outputs (empty for plain models)."""

    mask: Tensor
    aux: Mapping[str, Tensor] = {}


class PluginSite(NamedTuple):
    """Where a plug-in may attach: a submodule path whose output is a (B, C, h, w) feature map
    passed on to the rest of the network, and C."""

    path: str
    channels: int


class SegmentationModel(nn.Module):
    """Base class of every registered model (see the module docstring for the contract)."""

    #: Input height and width must be multiples of this.
    input_divisor: int = 1
    #: 1: binary, one logit map; K >= 2: K logit maps, background first (set by the builder
    #: and checked by ``create_model``).
    num_classes: int = 1
    #: Auxiliary outputs that are (B, 1, H, W) logit maps at the input size. An inference copy
    #: that needs none sets it to () (``prepare(..., maps=False)``); a model may then skip them.
    map_names: tuple[str, ...] = ()
    #: Submodule path of the encoder: its own learning rate, and what a stage can hand on.
    encoder_path: str | None = "encoder"
    #: ``{"name", "options"}``, set by ``create_model``: enough to rebuild the model.
    arch: dict[str, Any] | None = None
    #: The model file's header, set by ``load_model`` (None for a freshly created model).
    meta: dict[str, Any] | None = None
    #: Whether a call checks its input against the contract first (a wrapper whose inner model
    #: checks, or that takes any size itself, sets False).
    checks_input: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.register_forward_pre_hook(_check_input)

    def forward(self, x: Tensor) -> ModelOutput:  # pragma: no cover - the contract
        raise NotImplementedError

    def encoder_module(self) -> nn.Module | None:
        if not self.encoder_path:
            return None
        try:
            return self.get_submodule(self.encoder_path)
        except AttributeError as error:
            raise ModelError(
                f"{type(self).__name__} has no submodule {self.encoder_path!r} (its "
                "encoder_path); set encoder_path to the encoder's submodule, or None"
            ) from error

    def encoder_config(self) -> dict[str, Any]:
        """The encoder's timm ``pretrained_cfg`` (empty for an encoder without one)."""
        return getattr(self.encoder_module(), "pretrained_cfg", None) or {}

    def default_normalization(self) -> Normalization:
        """The mean/std the encoder was pretrained with, else ImageNet's."""
        cfg = self.encoder_config()
        return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))

    def plugin_sites(self) -> dict[str, PluginSite]:
        """Named sites for plug-ins (``models/plugins.py``), encoder stages first (``encoder1``,
        ...) then decoder blocks (``decoder1``, ...); none unless the model declares them."""
        return {}

    @property
    def name(self) -> str:
        return (self.arch or {}).get("name", type(self).__name__)


class WrappedModel(SegmentationModel):
    """A model around another (test-time augmentation, sliding windows): it keeps the inner
    model's input rule, maps, header and name."""

    encoder_path = None
    checks_input = False

    def __init__(self, model: SegmentationModel) -> None:
        super().__init__()
        self.model = require_model(model)
        self.input_divisor = model.input_divisor
        self.num_classes = model.num_classes
        self.map_names = model.map_names
        self.meta = model.meta

    @property
    def name(self) -> str:
        return self.model.name


def check_num_classes(num_classes: object, name: str = "a model") -> int:
    """``num_classes`` if it is one: an int from 1 (binary) to 255 (class ids 0..254, as 255
    marks ignored pixels)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not (
            1 <= num_classes <= MAX_CLASSES):
        raise ModelError(f"{name}: num_classes must be an int from 1 (binary) to {MAX_CLASSES} "
                         f"(background and the classes), got {num_classes!r}")
    return num_classes


def mask_channels(num_classes: int) -> int:
    """Channels of the mask logits: one map for binary, else one per class (background too)."""
    return 1 if num_classes == 1 else num_classes


def refuse_classes(name: str, num_classes: int, why: str) -> None:
    """Refuse K >= 2 at build time for a model that is binary by design, saying ``why``."""
    check_num_classes(num_classes, name)
    if num_classes != 1:
        raise ModelError(f"{name} is binary by design ({why}): it takes num_classes=1, not "
                         f"{num_classes}; use a method that takes classes (condseg methods)")


def class_names(model: SegmentationModel) -> tuple[str, ...] | None:
    """The names of the model's classes, background first (None: binary): its model file's,
    else ``background, class1, ...`` for a model not loaded from one."""
    if model.num_classes == 1:
        return None
    names = (model.meta or {}).get("classes")
    if names:
        return tuple(names)
    return ("background", *(f"class{i}" for i in range(1, model.num_classes)))


def _check_input(model: SegmentationModel, args: tuple[Any, ...]) -> None:
    """Forward pre-hook: an input the model cannot take is one :class:`ModelError` naming the
    size and the rule (as the CLI says it), not a shape mismatch deep inside the network."""
    if not model.checks_input or not args:
        return
    x = args[0]
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ModelError(f"{model.name} takes a normalised float tensor (B, 3, H, W); got {got}")
    check_input_size(model, int(x.shape[-2]), int(x.shape[-1]))


def require_model(model: object) -> SegmentationModel:
    if not isinstance(model, SegmentationModel):
        raise ModelError(
            f"expected a condseg model (SegmentationModel), got {type(model).__name__}; build it "
            "with condseg.create_model or load it with condseg.load_model"
        )
    return model


def normalization(model: SegmentationModel) -> Normalization:
    """Mean and std of the model file (None: scale to [0, 1] only), else the encoder's."""
    if model.meta is not None:
        return model.meta["mean"], model.meta["std"]
    return model.default_normalization()


def input_size(
    model: SegmentationModel, size: int | Sequence[int] | None = None
) -> tuple[int, int]:
    """The network input (H, W): ``size`` if given, else the model file's trained size;
    checked against the model's ``input_divisor``."""
    if size is None:
        if model.meta is None:
            raise ModelError(
                "an input size is required for a model that was not loaded from a model file"
            )
        size = model.meta["input_size"]
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    check_input_size(model, height, width)
    if max(height, width) > MAX_INPUT_SIDE:
        raise ModelError(f"input size {height}x{width} is beyond {MAX_INPUT_SIDE} pixels a side; "
                         "predict large images with sliding windows (--sliding-window)")
    return height, width


def check_input_size(model: SegmentationModel, height: int, width: int) -> None:
    divisor = model.input_divisor
    if height % divisor or width % divisor or min(height, width) <= 0:
        raise ModelError(
            f"input size {height}x{width} does not suit {model.name}: height and width must be "
            f"positive multiples of {divisor}"
        )


@contextmanager
def eval_mode(model: nn.Module, inference: bool = True) -> Iterator[None]:
    """Run in eval mode (BatchNorm running statistics) and restore the caller's mode after;
    ``inference=False`` keeps autograd's tracing machinery available (ONNX export)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(inference):
            yield
    finally:
        model.train(was_training)


def device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def probabilities(
    model: SegmentationModel, batch: Tensor, names: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """Probabilities (B, H, W) on the CPU of the mask and of the model's ``map_names``.

    A NaN is refused (:class:`NonFiniteOutputError`, naming the image: ``names`` of the batch,
    else its index), never thresholded into an empty mask. An infinite logit is a certain
    probability, kept. Call inside :func:`eval_mode`.
    """
    out = model(batch.to(device=device_of(model), dtype=torch.float32))
    logits = {"mask": out.mask, **{key: out.aux[key] for key in model.map_names}}
    probs = {key: torch.sigmoid(value.float())[:, 0].cpu() for key, value in logits.items()}
    for key, prob in probs.items():
        bad = torch.isnan(prob).flatten(1).any(1).nonzero()
        if len(bad):
            i = int(bad[0])
            image = names[i] if names is not None else f"image {i} of the batch"
            raise NonFiniteOutputError(
                f"{model.name} gave NaN probabilities ({key}) for {image}: its computation "
                "overflowed or its weights are broken; retry with --precision float32 "
                "(Execution(precision='float32')), or use another model file")
    return probs


def use_plain_kernels(model: nn.Module, plain: bool = True) -> None:
    """Switch every module that has a fast implementation to its plain reference one (the test
    oracle and the benchmark's ``plain`` path), or back. Such modules declare a boolean
    ``plain_kernels`` attribute and read it in ``forward``."""
    for module in model.modules():
        if hasattr(module, "plain_kernels"):
            module.plain_kernels = plain


def training_memory_format(
    device: torch.device, choice: str = "auto", plain: bool = False
) -> torch.memory_format:
    """The layout a training step runs in: ``auto`` is NCHW on the plain path (the reference as
    written) and on a CPU, where oneDNN's channels_last convolution backward measured 2.7×
    slower (docs/performance.md), and channels_last on a GPU (tensor cores want it)."""
    if choice == "auto":
        choice = "contiguous" if plain or device.type == "cpu" else "channels_last"
    if choice not in ("channels_last", "contiguous"):
        raise ModelError(f"memory_format must be auto, channels_last or contiguous, not {choice!r}")
    return torch.channels_last if choice == "channels_last" else torch.contiguous_format


@contextmanager
def plain_kernels(model: nn.Module) -> Iterator[None]:
    """Run ``model`` on its plain kernels inside the block, then restore each module's choice
    (ONNX export: the fast kernels are torch-side loops and custom autograd functions)."""
    modules = [m for m in model.modules() if hasattr(m, "plain_kernels")]
    before = [m.plain_kernels for m in modules]
    use_plain_kernels(model, True)
    try:
        yield
    finally:
        for module, plain in zip(modules, before, strict=True):
            module.plain_kernels = plain

