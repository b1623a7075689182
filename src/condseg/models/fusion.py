"""BatchNorm folding: an eval-mode BatchNorm2d that only ever normalises the output of one
Conv2d is an affine map per channel, so it can be folded into that convolution's weights and
bias and replaced by ``Identity`` — one pass over the feature map less, same function.

Pairs are found from the data flow of one probe forward pass, not from module names or
positions, because a module's ``forward`` may use its children in any order (Net_0 upsamples
between the convolution and the BatchNorm of its ``CBR``, timm's blocks call ``conv1``/``bn1``
by name). A torch function mode sees every operation that reads a tensor; a pair is folded only
when, in every call,

- the BatchNorm's input is exactly the tensor the convolution returned, and
- nothing but that BatchNorm reads the convolution's output (no residual, no resize, no
  in-place change, not returned by the model).

A tensor the model stores aside and reads after its forward returns is beyond any probe; no
registered model does that.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten


@dataclass
class _ConvCall:
    conv: nn.Conv2d
    output: Tensor
    readers: list[nn.BatchNorm2d | None] = field(default_factory=list)  # None: anything else


class _Probe(TorchFunctionMode):
    """Records which operation reads each convolution output during one forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[int, _ConvCall] = {}  # id(output) -> call; outputs are kept alive
        self.inside: list[tuple[nn.BatchNorm2d, Tensor]] = []  # BatchNorms running now
        self.sources: dict[nn.BatchNorm2d, list[_ConvCall | None]] = defaultdict(list)

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (),
                           kwargs: dict | None = None) -> object:
        kwargs = kwargs or {}
        for value in tree_flatten((args, kwargs))[0]:
            call = self.calls.get(id(value)) if isinstance(value, Tensor) else None
            if call is not None and call.output is value:
                own = self.inside and self.inside[-1][1] is value
                call.readers.append(self.inside[-1][0] if own else None)
        return func(*args, **kwargs)

    def conv_done(self, conv: nn.Module, args: tuple, output: Tensor) -> None:
        self.calls[id(output)] = _ConvCall(conv, output)  # type: ignore[arg-type]

    def bn_starts(self, bn: nn.Module, args: tuple) -> None:
        call = self.calls.get(id(args[0]))
        self.sources[bn].append(call if call is not None and call.output is args[0] else None)
        self.inside.append((bn, args[0]))  # type: ignore[arg-type]

    def bn_done(self, bn: nn.Module, args: tuple, output: Tensor) -> None:
        self.inside.pop()


def foldable_pairs(model: nn.Module, example: Tensor) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The (convolution, BatchNorm) pairs of ``model`` (in eval mode) that can be folded, found
    by running ``example`` through it (see the module docstring)."""
    probe = _Probe()
    handles = []
    for module in model.modules():
        if type(module) is nn.Conv2d:
            handles.append(module.register_forward_hook(probe.conv_done))
        elif type(module) is nn.BatchNorm2d and module.running_mean is not None:
            handles.append(module.register_forward_pre_hook(probe.bn_starts))
            handles.append(module.register_forward_hook(probe.bn_done))
    try:
        with torch.no_grad(), probe:
            returned = tree_flatten(model(example))[0]
    finally:
        for handle in handles:
            handle.remove()
    escaped = {id(t) for t in returned if isinstance(t, Tensor)}
    by_conv: dict[nn.Module, list[_ConvCall]] = defaultdict(list)
    for call in probe.calls.values():
        by_conv[call.conv].append(call)
    pairs = []
    for bn, sources in probe.sources.items():
        conv = sources[0].conv if sources[0] is not None else None
        if conv is None or any(s is None or s.conv is not conv for s in sources):
            continue
        if all(c.readers and set(c.readers) == {bn} and id(c.output) not in escaped
               for c in by_conv[conv]) and len(by_conv[conv]) == len(sources):
            pairs.append((conv, bn))
    return pairs


def fold_batchnorm(model: nn.Module, example: Tensor) -> int:
    """Fold every foldable BatchNorm of ``model`` (in eval mode) into its convolution, in
    place, and replace it by ``Identity``; returns how many were folded. Pass a copy to keep
    the original."""
    if model.training:
        raise ValueError("BatchNorm folds into a convolution only in eval mode (model.eval())")
    pairs = foldable_pairs(model, example)
    folded = {id(bn) for _, bn in pairs}
    with torch.no_grad():
        for conv, bn in pairs:
            conv.weight, conv.bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                bn.bias,
            )
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in folded:
                setattr(parent, name, nn.Identity())
    return len(pairs)
