"""One study run as a job: a ``condseg train`` process, started from the run's configuration or
continued from its checkpoints, with its wall time and peak memory recorded.

This runs inside submitit's job process — here (the local launcher) or on a SLURM node — so it
imports nothing heavy. The training process ends with the job (``PR_SET_PDEATHSIG``); a local
job ends with submitit's controller and with the study that started it, however the study ended
(even ``kill -9``), since it watches the study's process. On SLURM, a job warned of its time
limit stops its training and is requeued (submitit's :class:`~submitit.helpers.Checkpointable`);
the requeued job continues from the last checkpoint.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from submitit import JobEnvironment
from submitit.helpers import Checkpointable, DelayedSubmission

from condseg.layout import JobDir, RunDir

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class _Attempt:
    """The training process of this job, and what its record needs."""

    process: subprocess.Popen[bytes]
    argv: list[str]
    started: datetime
    clock: float


_attempt: _Attempt | None = None  # shared with the signal handlers and the study's watcher


@dataclass(frozen=True)
class Watched:
    """A process to end with: its id and its start time (so that a reused id is not it)."""

    pid: int
    started: str

    @classmethod
    def this_process(cls) -> Watched | None:
        started = process_start(os.getpid())
        return cls(os.getpid(), started) if started is not None else None

    def is_alive(self) -> bool:
        return process_start(self.pid) == self.started


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), None when there is
    no such process or no ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class RunJob(Checkpointable):
    """Train (or continue) the run ``run`` of a study; returns the training's exit status."""

    run: str
    job: str
    data: str
    threads: int | None = None  # CPU threads of the training (None: as the machine sets them)
    watch: Watched | None = None  # the study process, for a local job
    gpus: str | None = None  # CUDA_VISIBLE_DEVICES of a local job (None: as it is)

    def argv(self) -> list[str]:
        """``condseg train``: continued when the run was started, else from the job's config."""
        if RunDir(Path(self.run)).is_run():
            return ["train", "--resume", self.run]
        return ["train", "--config", str(JobDir(Path(self.job)).config), "--data", self.data,
                "--out", self.run]

    def __call__(self) -> int:
        global _attempt
        if self.watch is not None:  # a local job: also end with submitit's controller
            _die_with_parent()
        argv = self.argv()
        signal.signal(signal.SIGTERM, _forward)
        process = subprocess.Popen([sys.executable, "-m", "condseg", *argv], env=self._env(),
                                   preexec_fn=_training_process)
        _attempt = _Attempt(process, argv, datetime.now(timezone.utc), time.monotonic())
        if self.watch is not None:
            threading.Thread(target=_end_with, args=(self.watch,), daemon=True).start()
        process.wait()
        return self._record()

    def checkpoint(self, *args: object, **kwargs: object) -> DelayedSubmission:
        """Warned of its time limit (SLURM): stop the training (it keeps its last checkpoint),
        record the attempt and be requeued; the requeued job continues the run."""
        if _attempt is not None:
            _stop(_attempt.process, timeout=60.0)
        self._record()
        return DelayedSubmission(self)

    def _record(self) -> int:
        """Append the attempt to the job folder's ``attempts.jsonl`` (once); its exit status."""
        global _attempt
        done, _attempt = _attempt, None
        if done is None:
            return 1
        code = done.process.returncode if done.process.returncode is not None else -9
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the training's, KiB
        record = {"started": done.started.isoformat(timespec="seconds"),
                  "wall_s": round(time.monotonic() - done.clock, 1),
                  "peak_rss_mb": round(peak / 1024, 1), "exit_code": code,
                  "host": socket.gethostname(), "command": " ".join(["condseg", *done.argv]),
                  "job_id": str(JobEnvironment().job_id)}
        with JobDir(Path(self.job)).attempts.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return code

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        threads = self.threads or _slurm_cpus()
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        if self.gpus is not None:  # submitit's local executor would hide every GPU
            env["CUDA_VISIBLE_DEVICES"] = self.gpus
        return env


def _slurm_cpus() -> int | None:
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdecimal() else None


def _die_with_parent() -> None:
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _training_process() -> None:
    """In the training process before it starts: die with the job; take Ctrl-C itself (the
    job and submitit's controller ignore it; the training stops cleanly on it); leave SLURM's
    time-limit warning (SIGUSR2, sent to every process of the job) to the job."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    _die_with_parent()


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; reaped with ``os.waitpid``, since this runs in a
    signal handler that may have interrupted ``Popen.wait`` (which holds its lock)."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while True:
        pid, status = os.waitpid(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return
        if time.monotonic() > deadline:
            process.kill()
            process.returncode = os.waitstatus_to_exitcode(os.waitpid(process.pid, 0)[1])
            return
        time.sleep(0.5)


def _forward(signum: int, frame: object) -> None:
    """SIGTERM to the job (a cancelled job, a stopped study) stops the training cleanly."""
    if _attempt is not None and _attempt.process.returncode is None:
        _attempt.process.send_signal(signum)


def _end_with(study: Watched) -> None:
    """End the job (and so its training) once the study that started it is gone."""
    while study.is_alive():
        time.sleep(1.0)
    if _attempt is not None:
        _attempt.process.kill()
    os._exit(137)
