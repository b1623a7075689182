"""Starting a study's runs as jobs through submitit: here (``local``: at most ``jobs`` at once,
the CPU threads split between them, each started only when the memory it is expected to need is
free) or on a SLURM cluster (``slurm``: every run submitted, SLURM schedules them).

A run that fails is reported with its log and the others go on. When the study is stopped
(Ctrl-C, SIGTERM), its jobs stop their training cleanly (each keeps its last checkpoint) and
the study says how to continue; when the study is killed outright, its local jobs end with it.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import submitit
from rich.console import Console
from rich.markup import escape

from condseg.inference.loading import usable_cores
from condseg.interrupt import Interrupted
from condseg.study.job import RunJob, Watched
from condseg.study.runs import Attempt, StudyRun
from condseg.study.spec import Launcher

#: A run's expected peak memory before this study has measured any.
DEFAULT_MEMORY_GB = 4.0
_POLL_S = 1.0
_STOP_WAIT_S = 120.0  # how long stopped jobs get to end cleanly
_EPOCH = re.compile(r"^\S+ epoch \d+/\d+: ")  # training's line at the end of each epoch


@dataclass
class Outcome:
    """How a run's job ended in this call."""

    run: StudyRun
    attempt: Attempt | None  # None: the job ended without recording one (killed)

    @property
    def ok(self) -> bool:
        return self.attempt is not None and self.attempt.exit_code == 0


@dataclass
class _Running:
    """A started job: its run, the GPUs it was given (local), where its logs (stdout, stderr)
    began."""

    run: StudyRun
    gpus: str | None
    log_from: dict[Path, int]


def launch(
    runs: list[StudyRun], launcher: Launcher, data: Path, console: Console
) -> list[Outcome]:
    """Run the jobs of ``runs`` (in order) and return how each ended."""
    if not runs:
        return []
    local = launcher.name == "local"
    jobs = launcher.jobs if local else len(runs)
    threads = job_threads(launcher, len(runs)) if local else None
    watch = Watched.this_process() if local else None
    groups = gpu_groups(min(jobs, len(runs))) if local else []
    if local:
        console.print(f"{len(runs)} run(s), at most {jobs} at once, {threads} CPU thread(s) "
                      f"each{f', GPUs {groups}' if groups else ''}", highlight=False)
    pending, ended, progress = deque(runs), [], EpochLines(console)
    running: dict[submitit.Job[int], _Running] = {}
    try:
        while pending or running:
            while pending and len(running) < jobs and _memory_allows(
                    pending[0], runs, launcher, [r.run for r in running.values()], console):
                run = pending.popleft()
                gpus = min(groups, key=lambda g: sum(r.gpus == g for r in running.values()),
                           default=None)
                job, log_from = _submit(run, launcher, data, threads, watch, gpus)
                running[job] = _Running(run, gpus, log_from)
                progress.read[job.paths.stdout] = log_from[job.paths.stdout]
                console.print(f"started {run.label} ({'continued' if run.run.is_run() else 'new'}"
                              f"; log {job.paths.stdout})", highlight=False, markup=False)
            time.sleep(_POLL_S)
            for job, started in running.items():
                progress.show(started.run, job.paths.stdout)
            for job in [j for j in running if j.done()]:
                ended.append(_ended(job, running.pop(job), console))
    except Interrupted:
        _stop(list(running), launcher, console)
        raise
    return ended


def job_threads(launcher: Launcher, runs: int) -> int:
    """The CPU threads each local job gets: the usable cores split between the jobs at once."""
    return max(1, usable_cores() // max(1, min(launcher.jobs, runs)))


def job_gpus(launcher: Launcher, runs: int) -> int:
    """The GPUs each job trains on: a SLURM job's ``gpus_per_node``, else the most this
    machine's GPUs give one local job (:func:`gpu_groups`)."""
    if launcher.name == "slurm":
        return launcher.slurm.gpus_per_node
    groups = gpu_groups(max(1, min(launcher.jobs, runs)))
    return max((len(group.split(",")) for group in groups), default=0)


def gpu_groups(jobs: int) -> list[str]:
    """The GPUs of this machine (those ``CUDA_VISIBLE_DEVICES`` leaves) dealt to ``jobs``
    groups (fewer when there are fewer GPUs), as ``CUDA_VISIBLE_DEVICES`` values; none on a
    machine without CUDA."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [i.strip() for i in visible.split(",")][:count] if visible else [str(i) for i in
                                                                           range(count)]
    n = min(jobs, len(ids))
    return [",".join(ids[k::n]) for k in range(n)]


class EpochLines:
    """The end-of-epoch lines of the running jobs' logs, passed on as they are written
    (``condseg/seed0: stage1 epoch 2/4: train loss ...``), so that a long study shows it is
    alive."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.read: dict[Path, int] = {}

    def show(self, run: StudyRun, log: Path) -> None:
        try:
            with log.open("rb") as f:
                f.seek(self.read.get(log, 0))
                text = f.read()
        except OSError:
            return
        whole = text[: text.rfind(b"\n") + 1]  # a line still being written waits
        self.read[log] = self.read.get(log, 0) + len(whole)
        for line in whole.decode(errors="replace").splitlines():
            if _EPOCH.match(line):
                self.console.print(f"{run.label}: {line}", highlight=False, markup=False)


def _memory_allows(
    run: StudyRun, runs: list[StudyRun], launcher: Launcher, running: list[StudyRun],
    console: Console,
) -> bool:
    """Whether ``run`` may start now: locally, when the memory available, less what the
    running runs are expected to need (a run just started has not taken its memory yet), covers
    what it is expected to need — or when nothing else of the study runs (it then starts
    alone, with a warning)."""
    if launcher.name != "local":
        return True
    expected = {r.label: launcher.memory_gb or expected_memory_gb(r, runs) for r in [run, *running]}
    free = available_memory_gb()
    if free is None:
        return True
    left = free - sum(expected[r.label] for r in running)
    if left >= expected[run.label]:
        return True
    if running:
        return False
    console.print(f"[yellow]warning:[/] {run.label} is expected to need "
                  f"{expected[run.label]:.1f} GB and {free:.1f} GB are available; starting it "
                  "alone", highlight=False)
    return True


def expected_memory_gb(run: StudyRun, runs: list[StudyRun]) -> float:
    """The largest peak measured in this study for the run's method, else for any method,
    else :data:`DEFAULT_MEMORY_GB`."""
    for group in ([r for r in runs if r.method == run.method], runs):
        peaks = [a.peak_rss_mb for r in group for a in r.attempts()]
        if peaks:
            return max(peaks) / 1024
    return DEFAULT_MEMORY_GB


def available_memory_gb() -> float | None:
    """MemAvailable of ``/proc/meminfo`` in GB; None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024 ** 2
    except OSError:
        return None
    return None


def _submit(
    run: StudyRun, launcher: Launcher, data: Path, threads: int | None, watch: Watched | None,
    gpus: str | None,
) -> tuple[submitit.Job[int], dict[Path, int]]:
    """Submit the run's job (its processes ignore Ctrl-C: the training takes it); returns it
    and the sizes its logs had (a log is appended to when a process id comes again)."""
    executor = make_executor(launcher, run)
    task = RunJob(str(run.run.path), str(run.job.path), str(data), threads, watch, gpus)
    with _sigint_ignored():
        job = executor.submit(task)
    sizes = {}
    for log in (job.paths.stdout, job.paths.stderr):
        try:
            sizes[log] = log.stat().st_size
        except OSError:
            sizes[log] = 0
    return job, sizes


def make_executor(launcher: Launcher, run: StudyRun) -> submitit.Executor:
    """submitit's executor for one run: its folder is the run's job folder."""
    folder = run.job.launcher
    name = f"condseg-{run.method}-{run.name}"
    if launcher.name == "local":
        executor = submitit.LocalExecutor(folder)
        executor.update_parameters(timeout_min=60 * 24 * 365)  # a study's runs have no limit
        return executor
    slurm = launcher.slurm
    executor = submitit.SlurmExecutor(folder)
    executor.update_parameters(
        job_name=name, time=slurm.timeout_min, gpus_per_node=slurm.gpus_per_node,
        cpus_per_task=slurm.cpus_per_task, ntasks_per_node=1,
        **({"partition": slurm.partition} if slurm.partition else {}),
        **({"mem": f"{round(slurm.mem_gb * 1024)}MB"} if slurm.mem_gb else {}),
        **({"additional_parameters": dict(slurm.additional)} if slurm.additional else {}),
    )
    return executor


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _ended(job: submitit.Job[int], started: _Running, console: Console) -> Outcome:
    run, logs = started.run, f"{job.paths.stdout}, {job.paths.stderr}"
    attempt = next((a for a in reversed(run.attempts()) if a.job_id == str(job.job_id)), None)
    outcome = Outcome(run, attempt)
    if outcome.ok:
        console.print(f"finished {run.label} in {attempt.wall_s:.0f} s, peak "
                      f"{attempt.peak_rss_mb / 1024:.2f} GB", highlight=False)
    else:
        why = (f"exit status {attempt.exit_code}" if attempt is not None
               else "ended without a record (killed)")
        error = last_error(started.log_from)
        console.print(f"[red]failed[/] {run.label}: {why}{f': {escape(error)}' if error else ''}"
                      f" (logs {escape(logs)})", highlight=False)
    return outcome


def last_error(logs: dict[Path, int]) -> str | None:
    """Why a job failed, from its logs (each from the byte it began at in this call): the last
    ``error:`` or ``interrupted:`` line condseg printed, else the last line of a traceback (a
    bug's, on stderr), as ``Traceback: ValueError: ...``."""
    lines = []
    for log, start in logs.items():
        try:
            with log.open("rb") as f:
                f.seek(start)
                lines += f.read().decode(errors="replace").splitlines()
        except OSError:
            continue
    found = [line for line in lines if line.startswith(("error:", "interrupted:"))]
    if found:
        return found[-1]
    start = max((i for i, line in enumerate(lines) if line.startswith("Traceback")), default=None)
    if start is None:
        return None
    last = [line for line in lines[start + 1:] if line.strip() and not line[0].isspace()]
    return f"Traceback: {last[-1]}" if last else "Traceback"


def _stop(jobs: list[submitit.Job[int]], launcher: Launcher, console: Console) -> None:
    """Stop the running jobs: their training ends cleanly, keeping its last checkpoint."""
    if not jobs:
        return
    console.print(f"stopping {len(jobs)} running job(s)", highlight=False)
    for job in jobs:
        if launcher.name == "local":  # the controller passes SIGTERM on to the job
            with suppress(ProcessLookupError):  # it has just ended
                os.kill(int(job.job_id), signal.SIGTERM)
        else:
            job.cancel(check=False)
    deadline = time.monotonic() + _STOP_WAIT_S
    while launcher.name == "local" and time.monotonic() < deadline and not all(
            j.done() for j in jobs):
        time.sleep(_POLL_S)
