"""Child processes that end with the process that launched them (Linux).

Lightning's DDP launchers start the other ranks as plain child processes (re-run scripts or
spawned interpreters); when the launching process is killed (the OOM killer, ``kill -9``),
they would run on, holding memory and cores. The launcher records itself in
:data:`PARENT_ENV`, which the children inherit; each child then asks the kernel to kill it
when that parent dies. Kept free of heavy imports, so that a child can do it first.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

#: The process id of the process whose children are to end with it.
PARENT_ENV = "CONDSEG_DDP_PARENT"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def record_parent() -> None:
    """In a process that may launch children (not itself a DDP child): name it as their
    parent."""
    if os.environ.get("LOCAL_RANK", "0") == "0":
        os.environ[PARENT_ENV] = str(os.getpid())


def die_with_parent() -> None:
    """In a child of the process named by :data:`PARENT_ENV`: be killed when it dies, and exit
    at once if it has died already; elsewhere nothing."""
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdecimal() or int(parent) == os.getpid() or sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(parent):  # it died before the request was made
        os._exit(1)
