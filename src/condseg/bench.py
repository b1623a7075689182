"""``condseg benchmark``: speed and peak memory of the default execution path next to the plain one.

Each path runs in its own freshly spawned process, so that its peak RSS (``ru_maxrss``, which only
ever grows) is its own and not that of a path measured before it in the same process. The
"plain" path is the reference (float32, NCHW, the model as the registry builds it); "default" is
what we would run here: channels_last, plus bf16 autocast where the hardware runs bf16 natively.
Both children seed the same generator before building the model, so their weights and inputs are
identical and the parent can report how far the default path's mask probabilities drift from the
plain path's. Only measured figures are printed — timing on a shared machine is not a test.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from condseg.errors import CondsegError
from condseg.losses.base import Loss, create_loss

PATHS = ("default", "plain")
SEED = 0


@dataclass(frozen=True)
class Phase:
    """Wall time per batch over the timed repeats, and the process's peak memory after them."""

    median_ms: float
    min_ms: float
    max_ms: float
    peak_rss_mb: float
    peak_cuda_mb: float | None  # torch's peak allocation on the GPU; None on CPU


@dataclass(frozen=True)
class BenchResult:
    path: str
    model: str
    device: str
    dtype: str  # "float32", or the autocast dtype
    memory_format: str
    threads: int
    size: int
    batch: int
    load_avg: float  # 1-minute load average just before the child started: others' work skews us
    baseline_rss_mb: float  # peak RSS once torch is imported and the model built
    inference: Phase
    train: Phase | None
    max_abs_diff: float | None  # max |p_default − p_plain| of the mask probabilities; plain: None

    @property
    def images_per_s(self) -> float:
        return self.batch * 1000 / self.inference.median_ms


@dataclass(frozen=True)
class _Job:
    path: str
    model: str
    options: dict
    size: int
    batch: int
    train: bool
    repeats: int
    warmup: int
    threads: int
    device: str


def default_threads() -> int:
    """The cores this process may run on (not the machine's: containers and taskset limit it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_supports_bf16() -> bool:
    """Whether oneDNN has native bf16 instructions; without them bf16 is emulated and slower."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def run_benchmark(
    model: str = "condseg",
    size: int = 256,
    batch: int = 4,
    train: bool = False,
    repeats: int = 5,
    warmup: int = 2,
    model_options: dict | None = None,
    paths: Sequence[str] = PATHS,
    threads: int | None = None,
) -> list[BenchResult]:
    """Measure each path in its own spawned process; fill in the drift of "default" vs "plain"."""
    for name, value, least in (("size", size, 1), ("batch", batch, 1), ("repeats", repeats, 1),
                               ("warmup", warmup, 0),
                               ("threads", 1 if threads is None else threads, 1)):
        if value < least:
            raise CondsegError(f"{name} must be >= {least}; got {value}")
    unknown = set(paths) - set(PATHS)
    if unknown or not paths:
        raise CondsegError(f"unknown paths {sorted(unknown)}; choose from {', '.join(PATHS)}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    measured: dict[str, tuple[BenchResult, np.ndarray]] = {}
    for path in paths:
        job = _Job(path, model, dict(model_options or {}), size, batch, train, repeats, warmup,
                   threads or default_threads(), device)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            measured[path] = pool.submit(_measure, job, os.getloadavg()[0]).result()
    plain = measured.get("plain")
    results = []
    for path, (result, probs) in measured.items():
        diff = None if plain is None or path == "plain" else float(np.abs(probs - plain[1]).max())
        results.append(replace(result, max_abs_diff=diff))
    return results


def _measure(job: _Job, load_avg: float) -> tuple[BenchResult, np.ndarray]:
    """Child process: build the model, time inference (and a training step), record peaks."""
    from condseg.models.base import check_input_size
    from condseg.models.registry import create_model

    torch.set_num_threads(job.threads)
    device = torch.device(job.device)
    torch.manual_seed(SEED)
    net = create_model(job.model, pretrained=False, **job.options).to(device)
    check_input_size(net, job.size, job.size)
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(job.batch, 3, job.size, job.size, generator=generator)
    views = [x, torch.randn(x.shape, generator=generator)]  # a loss may need a second view
    target = (x.mean(1, keepdim=True) > 0).float().to(device)
    default = job.path == "default"
    fmt = torch.channels_last if default else torch.contiguous_format
    net = net.to(memory_format=fmt)
    views = [v.to(device, memory_format=fmt) for v in views]
    autocast_dtype = _autocast_dtype(job.device) if default else None
    baseline = _peak_rss_mb()

    def amp() -> AbstractContextManager:
        if autocast_dtype is None:
            return nullcontext()
        return torch.autocast(job.device, dtype=autocast_dtype)

    net.eval()
    with torch.inference_mode(), amp():
        probs = torch.sigmoid(net(views[0]).mask.float()).cpu().numpy()
        inference = _timed(lambda: net(views[0]), job, device)
    train = None
    if job.train:
        train = _timed(_train_step(net, views, target, amp), job, device)
    result = BenchResult(
        path=job.path, model=job.model, device=job.device,
        dtype=str(autocast_dtype or torch.float32).removeprefix("torch."),
        memory_format="channels_last" if default else "NCHW", threads=job.threads,
        size=job.size, batch=job.batch, load_avg=load_avg, baseline_rss_mb=baseline,
        inference=inference, train=train, max_abs_diff=None,
    )
    return result, probs


def _autocast_dtype(device: str) -> torch.dtype | None:
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def _train_step(
    net: torch.nn.Module,
    views: list[torch.Tensor],
    target: torch.Tensor,
    amp: Callable[[], AbstractContextManager],
) -> Callable[[], object]:
    """One optimiser step with the loss the model is trained with (:func:`training_loss`)."""
    loss_fn = training_loss(net.arch["name"]).to(views[0].device)
    extra = dict(zip(loss_fn.views, views[1:], strict=False))
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with amp():
            outputs = {"image": net(views[0])}
            outputs.update({key: net(view) for key, view in extra.items()})
            loss = loss_fn(outputs, target)["loss"]
        loss.backward()
        optimizer.step()

    return step


def training_loss(model: str) -> Loss:
    """The loss of the first method stage that trains ``model`` (ConDSeg: stage 2's, Net_0:
    stage 1's), else BCE + Dice."""
    from condseg.config import load_config
    from condseg.methods import list_methods

    for method in list_methods():
        cfg = load_config("default", [f"method={method}"])
        for stage in cfg.stages.values():
            name = stage.model.name if stage.model is not None else cfg.model.name
            if name == model:
                return create_loss(stage.loss.name, **stage.loss.options)
    return create_loss("bce-dice")


def _timed(fn: Callable[[], object], job: _Job, device: torch.device) -> Phase:
    """Run ``fn`` warm-up times untimed, then time each repeat (synchronising a GPU)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(job.warmup):
        fn()
    times = []
    for _ in range(job.repeats):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return Phase(
        median_ms=statistics.median(times), min_ms=min(times), max_ms=max(times),
        peak_rss_mb=_peak_rss_mb(),
        peak_cuda_mb=torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
    )


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def print_results(results: Sequence[BenchResult], console: Console | None = None) -> None:
    """One column per path (so that it fits a terminal); times are per batch, memory is the
    child process's peak RSS."""
    console = console or Console()
    first = results[0]
    table = Table(title=f"condseg benchmark: {first.model}, {first.size}×{first.size}, "
                        f"batch {first.batch}, {first.device}, {first.threads} threads")
    table.add_column("")
    for r in results:
        table.add_column(r.path, justify="right")
    rows = {
        "dtype": [r.dtype for r in results],
        "memory format": [r.memory_format for r in results],
        "inference images/s": [f"{r.images_per_s:.2f}" for r in results],
        "inference ms median (min–max)": [_span(r.inference) for r in results],
        "inference peak RSS MB": [_memory(r.inference) for r in results],
        "train step ms median (min–max)": [_span(r.train) if r.train else "—" for r in results],
        "train peak RSS MB": [_memory(r.train) if r.train else "—" for r in results],
        "max |Δp| vs plain": ["—" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}"
                              for r in results],
        "baseline RSS MB (model built)": [f"{r.baseline_rss_mb:.0f}" for r in results],
        "load average": [f"{r.load_avg:.2f}" for r in results],
    }
    for name, values in rows.items():
        table.add_row(name, *values)
    console.print(table)


def _span(phase: Phase) -> str:
    return f"{phase.median_ms:.1f} [{phase.min_ms:.1f}–{phase.max_ms:.1f}]"


def _memory(phase: Phase) -> str:
    cuda = "" if phase.peak_cuda_mb is None else f" (GPU {phase.peak_cuda_mb:.0f})"
    return f"{phase.peak_rss_mb:.0f}{cuda}"
