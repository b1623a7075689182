"""``condseg benchmark``: speed, peak memory and arithmetic of each execution path of a model.

Each path runs in its own fresh process (forked from a server that has only imported torch and
Lightning), so that its peak RSS (``ru_maxrss``, which only ever grows) is its own. Inference
runs the inference engine's own paths (:mod:`condseg.inference.engine`), exactly what
``predict`` and ``evaluate`` run:

- ``plain``: the reference — float32, NCHW, every module's plain kernels, no folding, every
  output of the network as written;
- ``float32-fast``: the fast kernels, BatchNorm folded into the convolutions, channels_last,
  float32, the mask alone (``prepare(maps=False)``: ``predict`` without ``--maps``);
- ``default``: ``float32-fast`` plus autocast where the hardware runs it natively (bf16 on a CPU
  with AVX512-BF16/AMX, bf16 or fp16 on CUDA).

A training step (``train=True``) is the Lightning module's own (nothing folds in training):
:meth:`~condseg.training.module.SegmentationModule.training_step` with the loss and optimiser
of the first method stage that trains the model (:func:`~condseg.training.plan.training_plan`),
then the backward pass and the optimiser step; ``plain`` in float32 NCHW with the plain
kernels, the others with the fast kernels and their autocast in the layout ``condseg train``
uses (:func:`~condseg.models.base.training_memory_format`). All children seed the same
generator before building the model, so their weights and inputs are identical and the parent
reports each path's drift of mask probabilities, speed and memory relative to plain. FLOPs
come from ``torch.utils.flop_counter``. Only measured figures are printed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from condseg.errors import OptionError, first_line
from condseg.files import write_text
from condseg.inference.engine import Execution, cpu_supports_bf16
from condseg.inference.loading import usable_cores
from condseg.models.base import SegmentationModel

PATHS = ("default", "float32-fast", "plain")
SEED = 0


@dataclass(frozen=True)
class Phase:
    """Wall time per batch over the timed repeats, and the process's peak memory after them."""

    median_ms: float
    min_ms: float
    max_ms: float
    peak_rss_mb: float
    peak_cuda_mb: float | None  # torch's peak allocation on the GPU; None on CPU
    times_ms: tuple[float, ...] = ()  # every timed repeat


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
    parameters: int
    gflops_per_image: float  # torch's flop counter, one forward pass of one image on this path
    batchnorm_folded: int
    inference: Phase
    train: Phase | None
    train_memory_format: str | None = None  # the training step's layout (None: not trained)
    max_abs_diff: float | None = None  # max |p_path − p_plain| of the mask probabilities
    # relative to the plain path of the same model (None for plain itself or without it):
    inference_speedup: float | None = None  # plain time / this path's time
    train_speedup: float | None = None
    train_memory_ratio: float | None = None  # this path's training peak RSS / plain's

    @property
    def images_per_s(self) -> float:
        return self.batch * 1000 / self.inference.median_ms


@dataclass
class BenchReport:
    """Every path of every model measured, and the models that could not be, with the reason."""

    results: list[BenchResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Job:
    path: str
    model: str
    options: dict
    size: int
    batch_size: int
    train: bool
    repeats: int
    warmup: int
    threads: int
    device: str


def benchmark_models(
    models: str | Sequence[str] = "condseg", **settings: object
) -> BenchReport:
    """:func:`run_benchmark` for each model (``"all"``: every registered one). With ``"all"`` or
    a list, a model that cannot be built with its default options or fails is skipped with the
    reason (reported, never silently); one model named alone raises its error."""
    from condseg.models.registry import list_models

    single = isinstance(models, str) and models != "all"
    names = list_models() if models == "all" else [models] if single else list(models)
    report = BenchReport()
    for name in names:
        try:
            report.results.extend(run_benchmark(name, **settings))  # type: ignore[arg-type]
        except Exception as error:  # reported in the report, not swallowed
            if single:
                raise
            report.skipped[name] = f"{type(error).__name__}: {first_line(error)}"
    return report


def run_benchmark(
    model: str = "condseg",
    size: int = 256,
    batch_size: int = 4,
    train: bool = False,
    repeats: int = 5,
    warmup: int = 2,
    model_options: dict | None = None,
    paths: Sequence[str] = PATHS,
    threads: int | None = None,
    rounds: int = 1,
) -> list[BenchResult]:
    """Measure each path in its own fresh process, ``rounds`` times in turn (default, fast,
    plain, default, ...: a slow spell of a shared machine then hits every path alike; the times
    of all rounds are pooled, the peaks are the highest); fill in each path's drift, speed-up
    and memory relative to "plain"."""
    for name, value, least in (("size", size, 1), ("batch_size", batch_size, 1),
                               ("repeats", repeats, 1), ("warmup", warmup, 0),
                               ("rounds", rounds, 1),
                               ("threads", 1 if threads is None else threads, 1)):
        if value < least:
            flag = "--" + name.replace("_", "-")
            raise OptionError(f"{name} ({flag}) must be >= {least}; got {value}")
    unknown = set(paths) - set(PATHS)
    if unknown or not paths:
        raise OptionError(f"unknown paths {sorted(unknown)}; choose from {', '.join(PATHS)}")
    _check_buildable(model, dict(model_options or {}), size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs: dict[str, list[tuple[BenchResult, np.ndarray]]] = {path: [] for path in paths}
    for _ in range(rounds):
        for path in paths:
            job = _Job(path, model, dict(model_options or {}), size, batch_size, train, repeats,
                       warmup, threads or usable_cores(), device)
            with ProcessPoolExecutor(1, mp_context=_fresh_processes(train)) as pool:
                runs[path].append(pool.submit(_measure, job, os.getloadavg()[0]).result())
    measured = {path: (_pooled([r for r, _ in done]), done[0][1]) for path, done in runs.items()}
    plain = measured.get("plain")
    return [result if plain is None or path == "plain" else _relative(result, probs, *plain)
            for path, (result, probs) in measured.items()]


def _fresh_processes(train: bool) -> multiprocessing.context.BaseContext:
    """Processes that start with the imports done and nothing run (Lightning alone takes ~10 s
    to import on a 2-core CPU, which ``spawn`` would pay per path and round)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["torch", "condseg.bench", *(["condseg.training.module"] if train else [])])
    return context


def _pooled(results: list[BenchResult]) -> BenchResult:
    """One result from the rounds of a path: times pooled, the highest peaks and load."""

    def phase(phases: list[Phase]) -> Phase:
        times = [t for p in phases for t in p.times_ms]
        cuda = [p.peak_cuda_mb for p in phases if p.peak_cuda_mb is not None]
        return Phase(median_ms=statistics.median(times), min_ms=min(times), max_ms=max(times),
                     peak_rss_mb=max(p.peak_rss_mb for p in phases),
                     peak_cuda_mb=max(cuda) if cuda else None, times_ms=tuple(times))

    first = results[0]
    return replace(first, load_avg=max(r.load_avg for r in results),
                   baseline_rss_mb=max(r.baseline_rss_mb for r in results),
                   inference=phase([r.inference for r in results]),
                   train=phase([r.train for r in results]) if first.train else None)


def _check_buildable(model: str, options: dict, size: int) -> None:
    """Build the model on the meta device (no memory, no time): a model that needs options it
    was not given, or a size it cannot take, is refused before any process starts."""
    from condseg.models.base import check_input_size
    from condseg.models.registry import create_model

    with torch.device("meta"):
        net = create_model(model, pretrained=False, **options)
    check_input_size(net, size, size)


def _relative(
    result: BenchResult, probs: np.ndarray, plain: BenchResult, plain_probs: np.ndarray
) -> BenchResult:
    train = result.train is not None and plain.train is not None
    return replace(
        result,
        max_abs_diff=float(np.abs(probs - plain_probs).max()),
        inference_speedup=plain.inference.median_ms / result.inference.median_ms,
        train_speedup=plain.train.median_ms / result.train.median_ms if train else None,
        train_memory_ratio=result.train.peak_rss_mb / plain.train.peak_rss_mb if train else None,
    )


def _execution(path: str, device: str) -> Execution:
    if path == "plain":
        return Execution(device=device, plain=True)
    return Execution(device=device, precision="float32" if path == "float32-fast" else "auto")


def _measure(job: _Job, load_avg: float) -> tuple[BenchResult, np.ndarray]:
    """Child process: build the model, time inference (and a training step), record peaks."""
    from torch.utils.flop_counter import FlopCounterMode

    from condseg.inference.engine import prepare
    from condseg.models.registry import create_model

    torch.set_num_threads(job.threads)
    device = torch.device(job.device)
    torch.manual_seed(SEED)
    net = create_model(job.model, pretrained=False, **job.options).to(device).eval()
    parameters = sum(p.numel() for p in net.parameters())
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(job.batch_size, 3, job.size, job.size, generator=generator)
    second = torch.randn(x.shape, generator=generator)  # a loss may need a second view
    target = (x.mean(1, keepdim=True) > 0).float().to(device)
    execution = _execution(job.path, job.device)
    prepared = prepare(net, execution, maps=False)  # what predict runs
    fmt = prepared.memory_format
    views = [v.to(device, memory_format=fmt) for v in (x, second)]
    baseline = _peak_rss_mb()

    with torch.inference_mode():
        probs = torch.sigmoid(prepared(views[0]).mask.float()).cpu().numpy()  # folds, compiles
        counter = FlopCounterMode(display=False)
        with counter:
            prepared(views[0][:1])
        inference = _timed(lambda: prepared(views[0]), job, device)
    folded = int(prepared.folded or 0)
    prepared = None  # the copy's memory is free before training
    train = train_format = None
    if job.train:

        def amp() -> AbstractContextManager:
            dtype = execution.autocast_dtype()
            return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

        step, layout = _train_step(net, views, target, execution.plain, amp)
        train_format = _layout_name(layout)
        train = _timed(step, job, device)
    dtype = execution.autocast_dtype() or torch.float32
    result = BenchResult(
        path=job.path, model=job.model, device=job.device,
        dtype=str(dtype).removeprefix("torch."),
        memory_format=_layout_name(fmt), threads=job.threads,
        size=job.size, batch=job.batch_size, load_avg=load_avg, baseline_rss_mb=baseline,
        parameters=parameters, gflops_per_image=counter.get_total_flops() / 1e9,
        batchnorm_folded=folded,
        inference=inference, train=train, train_memory_format=train_format,
    )
    return result, probs


def _train_step(
    net: SegmentationModel,
    views: list[torch.Tensor],
    target: torch.Tensor,
    plain: bool,
    amp: Callable[[], AbstractContextManager],
) -> tuple[Callable[[], object], torch.memory_format]:
    """One optimiser step of the module ``condseg train`` runs for ``net``, with the loss and
    optimiser of the stage that trains it (BCE + Dice and Adam when no method does), and the
    layout it trains in (the images' views are those the loss needs)."""
    from condseg.config import StageConfig
    from condseg.losses.base import create_loss
    from condseg.training.module import SegmentationModule
    from condseg.training.plan import training_plan

    plan = training_plan(net.arch["name"])
    cfg = plan.cfg if plan is not None else StageConfig()
    loss = plan.create_loss() if plan is not None else create_loss(cfg.loss.name)
    device = views[0].device
    module = SegmentationModule(net, loss, cfg, plain_kernels=plain).to(device)
    layout = module.use_layout_of(device)
    # Outside a Trainer the module's logging is a no-op that warns on every step.
    warnings.filterwarnings("ignore", message=r"You are trying to `self.log\(\)`")
    batch = module.on_after_batch_transfer(
        {"image": views[0], "mask": target, **dict(zip(loss.views, views[1:], strict=False))}, 0)
    module.train()
    optimizer = module.configure_optimizers()["optimizer"]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with amp():
            value = module.training_step(batch, 0)
        value.backward()
        optimizer.step()

    return step, layout


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
        times_ms=tuple(times),
    )


def _layout_name(layout: torch.memory_format) -> str:
    return "channels_last" if layout == torch.channels_last else "NCHW"


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def print_results(results: Sequence[BenchResult], console: Console | None = None) -> None:
    """One table per model, one column per path (so that it fits a terminal); times are per
    batch, memory is the child process's peak RSS, ratios are relative to the plain path."""
    console = console or Console()
    for model in dict.fromkeys(r.model for r in results):
        _print_model([r for r in results if r.model == model], console)


def print_report(report: BenchReport, console: Console | None = None) -> None:
    """The tables of :func:`print_results`, then each model not benchmarked and why."""
    console = console or Console()
    print_results(report.results, console)
    for model, reason in report.skipped.items():
        console.print(f"[yellow]{escape(model)} not benchmarked:[/] {escape(reason)}",
                      highlight=False, soft_wrap=True)


def _print_model(results: Sequence[BenchResult], console: Console) -> None:
    first = results[0]
    table = Table(title=f"condseg benchmark: {first.model} ({first.parameters / 1e6:.1f} M "
                        f"parameters), {first.size}×{first.size}, batch {first.batch}, "
                        f"{first.device}, {first.threads} threads")
    table.add_column("")
    for r in results:
        table.add_column(r.path, justify="right")
    rows = {
        "dtype": [r.dtype for r in results],
        "memory format": [r.memory_format for r in results],
        "BatchNorms folded": [str(r.batchnorm_folded) for r in results],
        "GFLOP per image (torch counter)": [f"{r.gflops_per_image:.1f}" for r in results],
        "inference images/s": [f"{r.images_per_s:.2f}" for r in results],
        "inference ms median (min–max)": [_span(r.inference) for r in results],
        "inference × plain (speed)": [_ratio(r.inference_speedup) for r in results],
        "inference peak RSS MB": [_memory(r.inference) for r in results],
        "train memory format": [r.train_memory_format or "—" for r in results],
        "train step ms median (min–max)": [_span(r.train) if r.train else "—" for r in results],
        "train × plain (speed)": [_ratio(r.train_speedup) for r in results],
        "train peak RSS MB": [_memory(r.train) if r.train else "—" for r in results],
        "train peak RSS ÷ plain": [_ratio(r.train_memory_ratio) for r in results],
        "max |Δp| vs plain": ["—" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}"
                              for r in results],
        "baseline RSS MB (model built)": [f"{r.baseline_rss_mb:.0f}" for r in results],
        "load average": [f"{r.load_avg:.2f}" for r in results],
    }
    for name, values in rows.items():
        table.add_row(name, *values)
    console.print(table)


def write_json(report: BenchReport, path: str | Path) -> Path:
    """All figures (each result with its phases, images/s and ratios to plain), the models
    skipped with the reason, and the machine they were measured on."""
    machine = {
        "platform": platform.platform(), "processor": _processor(),
        "torch": torch.__version__, "cpu_native_bf16": cpu_supports_bf16(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "usable_cores": usable_cores(),
    }
    results = [{**asdict(r), "images_per_s": r.images_per_s} for r in report.results]
    document = {"machine": machine, "results": results, "skipped": report.skipped}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_text(Path(path), json.dumps(document, indent=2) + "\n")


def _processor() -> str:
    """The CPU's model name (``platform.processor()`` is empty on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _span(phase: Phase) -> str:
    return f"{phase.median_ms:.1f} [{phase.min_ms:.1f}–{phase.max_ms:.1f}]"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _memory(phase: Phase) -> str:
    cuda = "" if phase.peak_cuda_mb is None else f" (GPU {phase.peak_cuda_mb:.0f})"
    return f"{phase.peak_rss_mb:.0f}{cuda}"
