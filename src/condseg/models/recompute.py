"""Activation recomputation for memory-lean training.

A block run through :func:`checkpointed` keeps none of its intermediate activations for
backward: torch's non-reentrant checkpoint runs it again during backward. BatchNorm in training
mode would update its running statistics a second time on that rerun, so the rerun restores
them afterwards: the statistics, like the outputs and gradients, are those of one plain run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpointed(
    module: nn.Module, *args: Any, call: Callable[..., Any] | None = None
) -> Any:
    """``call(*args)`` (default ``module(*args)``) with its activations recomputed in backward;
    ``module`` holds every BatchNorm that ``call`` runs."""
    return checkpoint(
        call or module, *args, use_reentrant=False,
        context_fn=lambda: (nullcontext(), _batchnorm_statistics_kept(module)),
    )


@contextmanager
def _batchnorm_statistics_kept(module: nn.Module) -> Iterator[None]:
    buffers = [
        buffer
        for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for buffer in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buffer is not None
    ]
    saved = [buffer.clone() for buffer in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)
