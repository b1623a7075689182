"""What a stage's training costs, in the two currencies of a compute budget.

FLOPs: torch's flop counter over one training step, per image — the forward pass of every view
the stage's loss needs (ConDSeg's stage 1 sees two), the loss (LossNet's VGG included) and the
backward pass — of the plain reference computation (no recomputation, no fused CPU kernels: what
the method computes, the same on every machine), with the network laid out on the meta device,
so that nothing is computed or allocated (the loss is built as training builds it). A stage
whose batch hook draws input sizes (multi-scale) costs the mean over the sizes it draws, each
drawn as often as the others.

Time: the parts of an epoch timed here on the run's data, with the device, threads and
precision the stage trains with: loading images, a training step (the module's own: hook, loss,
backward, optimiser step), a validation batch, and serialising a checkpoint.
"""

from __future__ import annotations

import copy
import io
import math
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

from condseg.config import RunConfig
from condseg.data.dataset import train_and_val_datasets
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
    config: RunConfig, parts: StageParts, *, threads: int, steps: int = 3
) -> float:
    """Seconds one epoch of the planned stage ``parts`` of ``config`` is expected to take here,
    from timed parts of it on the run's data (``config.data.root`` and splits set): loading and
    augmenting images (serial with ``data.num_workers`` 0, else overlapped with the steps),
    ``steps`` training steps and validation batches (after one of each untimed), and writing
    the two checkpoints of an epoch (``last.ckpt`` and a new best: the model and optimiser
    state, serialised), in the precision the run resolves to."""
    plan, data = parts.plan, config.data
    cfg, stage = plan.cfg, plan.name
    precision = resolve_precision(config).precision
    device = torch.device(training_device(config))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        network = create_model(plan.model, pretrained=False, **plan.options)
        norm = (data.mean, data.std) if data.mean is not None else network.default_normalization()
        train_set, val_set = train_and_val_datasets(data, cfg.augmentation, cfg.views, *norm)
        count = min(data.batch_size, len(train_set))
        load_s = _mean_seconds(lambda: [train_set[i] for i in range(count)], 1, device) / count
        module = SegmentationModule.from_parts(network, parts).to(device)
        module.use_layout_of(device)
        batch = module.on_after_batch_transfer(
            {k: v.to(device) if isinstance(v, torch.Tensor) else v
             for k, v in default_collate([train_set[i] for i in range(count)]).items()}, 0)
        optimizer = module.configure_optimizers()["optimizer"]
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)

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

        def checkpoint() -> None:
            torch.save({"state_dict": module.state_dict(),
                        "optimizer_states": [optimizer.state_dict()]}, io.BytesIO())

        module.train()
        draws = len(parts.batch_hook.sizes) if parts.batch_hook is not None else 1
        with torch.random.fork_rng(devices=[]):  # a hook's sizes: the same draws every time
            torch.manual_seed(0)
            for _ in range(2 * draws - 1):  # the warm-up below sees most sizes first
                train_step()
            train_s = _mean_seconds(train_step, steps * draws, device)
        module.eval()
        val_s = _mean_seconds(val_step, steps, device) * data.batch_size / count
        checkpoint_s = _mean_seconds(checkpoint, 1, device)
    finally:
        torch.set_num_threads(before)
        if device.type == "cuda":  # the study's process keeps nothing on the jobs' GPU
            torch.cuda.empty_cache()
    images = images_per_epoch(config, stage, len(train_set))
    val_batches = batches(math.ceil(len(val_set) / data.batch_size), cfg.limit_val_batches)
    val_images = min(len(val_set), val_batches * data.batch_size)
    train, val = images / count * train_s, val_batches * val_s
    loading = (images + val_images) * load_s
    compute = (max(train + val, loading / data.num_workers) if data.num_workers
               else train + val + loading)
    return compute + 2 * checkpoint_s


def _mean_seconds(step: Callable[[], object], repeats: int, device: torch.device) -> float:
    """The mean seconds of ``repeats`` calls of ``step`` after one untimed (first-call
    allocations, kernel choices, the page cache); a mean, since a hook's sizes mix."""
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats
