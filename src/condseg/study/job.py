"""One study run as a job: a ``condseg train`` process, started from the run's configuration or
continued from its checkpoints, with its wall time and peak memory recorded.

This runs inside submitit's job process — here (the local launcher) or on a SLURM node — so it
imports nothing heavy. The training process ends with the job (``PR_SET_PDEATHSIG``); a local
job also ends with the study that started it, however the study ended (even ``kill -9``),
since it watches the study's process. On SLURM, a job told of its time limit or preemption
stops its training and is requeued (submitit's :class:`~submitit.helpers.Checkpointable`); the
requeued job continues from the last checkpoint.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from submitit.helpers import Checkpointable, DelayedSubmission

from condseg.layout import JobDir, RunDir

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_child: subprocess.Popen[bytes] | None = None  # the training process of this job


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

    def argv(self) -> list[str]:
        """``condseg train``: continued when the run was started, else from the job's config."""
        if RunDir(Path(self.run)).is_run():
            return ["train", "--resume", self.run]
        return ["train", "--config", str(JobDir(Path(self.job)).config), "--data", self.data,
                "--out", self.run]

    def __call__(self) -> int:
        global _child
        argv = self.argv()
        started, clock = datetime.now(timezone.utc), time.monotonic()
        signal.signal(signal.SIGTERM, _forward)
        _child = subprocess.Popen([sys.executable, "-m", "condseg", *argv], env=self._env(),
                                  preexec_fn=_end_with_parent)
        if self.watch is not None:
            threading.Thread(target=_end_with, args=(self.watch,), daemon=True).start()
        _, status, usage = os.wait4(_child.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        record = {"started": started.isoformat(timespec="seconds"),
                  "wall_s": round(time.monotonic() - clock, 1),
                  "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "exit_code": code,
                  "host": socket.gethostname(), "command": " ".join(["condseg", *argv])}
        with JobDir(Path(self.job)).attempts.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return code

    def checkpoint(self, *args: object, **kwargs: object) -> DelayedSubmission:
        """Told of its time limit or preemption (SLURM): stop the training (it keeps its last
        checkpoint) and be requeued; the requeued job continues the run."""
        _stop_child(timeout=60.0)
        return DelayedSubmission(self)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        threads = self.threads or _slurm_cpus()
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        return env


def _slurm_cpus() -> int | None:
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() else None


def _end_with_parent() -> None:
    """In the training process before it starts: die with the job, and take Ctrl-C itself (the
    job and submitit's controller ignore it; the training stops cleanly on it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _forward(signum: int, frame: object) -> None:
    """SIGTERM to the job (a cancelled job, a stopped study) stops the training cleanly."""
    if _child is not None and _child.poll() is None:
        _child.send_signal(signum)


def _stop_child(timeout: float) -> None:
    if _child is None or _child.poll() is not None:
        return
    _child.terminate()
    try:
        _child.wait(timeout)
    except subprocess.TimeoutExpired:
        _child.kill()


def _end_with(study: Watched) -> None:
    """End the job (and so its training) once the study that started it is gone."""
    while study.is_alive():
        time.sleep(1.0)
    if _child is not None:
        _child.kill()
    os._exit(137)
