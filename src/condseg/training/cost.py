"""What a stage's training costs, in the two currencies of a compute budget.

FLOPs: torch's flop counter over one training step, per image — the forward pass of every view
the stage's loss needs (ConDSeg's stage 1 sees two), the loss (LossNet's VGG included) and the
backward pass — of the plain reference computation (no recomputation, no fused CPU kernels: what
the method computes, the same on every machine), laid out on the meta device, so that nothing is
computed, allocated or downloaded. A stage whose batch hook draws input sizes (multi-scale)
costs the mean over the sizes it draws, each drawn as often as the others.

Time: the seconds of a training step (the module's own, hook and optimiser step included) and of
a validation batch, measured here on the device, threads and precision the stage trains with.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from condseg.config import RunConfig
from condseg.models.base import use_plain_kernels
from condseg.models.registry import create_model
from condseg.training.module import SegmentationModule
from condseg.training.plan import StageParts, plan_stages, stage_parts
from condseg.training.recipe import resolve_precision, training_device

_COUNTED_BATCH = 2  # BatchNorm in training mode needs more than one value per channel


@dataclass(frozen=True)
class StageCost:
    """One stage's cost per epoch: FLOPs, and (calibrated) seconds."""

    flops_per_image: float
    images_per_epoch: int  # training images an epoch sees (full batches only, batch limits)
    seconds_per_epoch: float | None = None  # calibrated here (None: not measured)

    @property
    def flops_per_epoch(self) -> float:
        return self.flops_per_image * self.images_per_epoch


def stage_flops(config: RunConfig, stage: str) -> float:
    """Training FLOPs per image of ``stage`` of ``config`` (see the module's docstring)."""
    return flops_per_image(stage_parts(plan_stages(config, [stage])[stage], config),
                           config.data.size)


def flops_per_image(parts: StageParts, size: int) -> float:
    """Training FLOPs per image of the planned stage ``parts`` at input ``size`` (or, with a
    hook that draws sizes, the mean over them)."""
    plan = parts.plan
    with torch.device("meta"):
        network = create_model(plan.model, pretrained=False, **plan.options)
    use_plain_kernels(network, True)
    module = SegmentationModule(network, copy.deepcopy(parts.loss).to("meta"), plan.cfg,
                                plain_kernels=True)
    module.train()
    hook = parts.batch_hook
    sizes = list(hook.sizes) if hook is not None and hook.sizes else [size]
    counts = [_counted_step(module, s, parts.classes is not None) for s in sizes]
    return statistics.fmean(counts) / _COUNTED_BATCH


def _counted_step(module: SegmentationModule, size: int, classes: bool) -> float:
    shape = (_COUNTED_BATCH, 3, size, size)
    mask = (torch.zeros((_COUNTED_BATCH, 1, size, size), dtype=torch.int64, device="meta")
            if classes else torch.zeros((_COUNTED_BATCH, 1, size, size), device="meta"))
    batch = {view: torch.zeros(shape, device="meta") for view in ("image", *module.loss.views)}
    counter = FlopCounterMode(display=False)
    with counter:
        _, losses = module.step_losses({**batch, "mask": mask})
        losses["loss"].backward()
    return float(counter.get_total_flops())


def images_per_epoch(config: RunConfig, stage: str, train_images: int) -> int:
    """Training images one epoch of ``stage`` sees: full batches only (a last partial batch is
    dropped when there is more than one), within the stage's ``limit_train_batches``."""
    batch = config.data.batch_size
    if train_images <= batch:
        return train_images
    return batches(train_images // batch, config.stages[stage].limit_train_batches) * batch


def batches(count: int, limit: int | float) -> int:
    """Batches Lightning runs of ``count`` under a limit (a number of them, or a share)."""
    if isinstance(limit, int):
        return min(count, limit)
    return max(1, int(count * limit)) if limit > 0 else 0


def seconds_per_epoch(
    config: RunConfig, stage: str, train_images: int, val_images: int, *, threads: int,
    steps: int = 3,
) -> float:
    """Seconds one epoch of ``stage`` is expected to take here: ``steps`` timed training steps
    and validation batches (after one of each untimed) times the epoch's count of each."""
    config = resolve_precision(config)
    parts = stage_parts(plan_stages(config, [stage])[stage], config)
    plan, device = parts.plan, torch.device(training_device(config))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        network = create_model(plan.model, pretrained=False, **plan.options)
        module = SegmentationModule.from_parts(network, parts).to(device)
        layout = module.use_layout_of(device)
        size, batch_size = config.data.size, min(config.data.batch_size, max(train_images, 1))
        batch = _random_batch(batch_size, size, module.loss.views, parts.classes, device, layout)
        optimizer = module.configure_optimizers()["optimizer"]
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(plan.precision)

        def amp() -> torch.autocast | nullcontext:
            return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

        def train_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with amp(), warnings.catch_warnings():  # self.log outside a Trainer warns
                warnings.simplefilter("ignore")
                value = module.training_step(batch, 0)
            value.backward()
            optimizer.step()

        def val_step() -> None:
            with torch.no_grad(), amp():
                module.model(batch["image"])

        module.train()
        train_s = _median_seconds(train_step, steps, device)
        module.eval()
        val_s = _median_seconds(val_step, steps, device)
    finally:
        torch.set_num_threads(before)
    cfg = config.stages[stage]
    train_batches = images_per_epoch(config, stage, train_images) / batch_size
    val_batches = batches(math.ceil(val_images / config.data.batch_size), cfg.limit_val_batches)
    return train_batches * train_s + val_batches * val_s


def _random_batch(
    count: int, size: int, views: tuple[str, ...], classes: tuple[str, ...] | None,
    device: torch.device, layout: torch.memory_format,
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = {view: torch.randn(count, 3, size, size, generator=generator).to(
        device, memory_format=layout) for view in ("image", *views)}
    shape = (count, 1, size, size)
    mask = (torch.randint(len(classes), shape, generator=generator) if classes is not None
            else (torch.rand(shape, generator=generator) > 0.5).float())
    return {**images, "mask": mask.to(device)}


def _median_seconds(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    step()  # warm-up: first-call allocations and kernel choices
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
