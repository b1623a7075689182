"""Output folders that two processes never share and that a failed or interrupted command does
not leave half-made.

:func:`claim` takes a folder for a command's life, before its long work: it creates what is
missing (noting which folders *this* process made), and holds a lock file in it
(``fcntl.flock``, recording PID and start time), so a second command on the same folder is
refused at once, naming the holder. The kernel drops the lock when its process dies, so the
lock of a killed run is simply taken over. A folder that cannot be used (a file, read-only,
full, a parent that is a file) is one :class:`OutputError` naming path and cause. When the
command fails or is interrupted, only what this process added is removed, and the folders it
made; a folder the user made is never removed, nor anything that was there before.

:func:`staged` builds a whole new folder as ``.NAME.partial`` beside it, renamed at the end:
the folder is complete or absent, and a rerun clears the partial one a killed process left
(marked by :data:`STAGED`: a folder of that name the user made is refused, never emptied).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import inspect
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import ParamSpec, TypeVar

from condseg.errors import OutputBusyError, OutputError
from condseg.filekind import mode_kind
from condseg.interrupt import Interrupted

LOCK = ".condseg.lock"
#: The mark of a partial folder :func:`staged` made: only a marked one is ever cleared.
STAGED = ".condseg-staged"
#: Never follow a link, never wait on a FIFO, never leak into a child process.
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
P = ParamSpec("P")
R = TypeVar("R")

#: errno values that describe the machine or the user's paths, never a bug of condseg.
ENVIRONMENT_ERRNOS = frozenset({
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EEXIST,
    errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EIO, errno.EFBIG,
    errno.EMFILE, errno.ENFILE, errno.ETXTBSY, errno.EXDEV,
})


def describe(error: OSError, path: Path | None = None) -> str:
    """``PATH: cause`` of an OSError: the path given to the call that failed, else ``path``
    (a failed ``write`` names none), else the cause alone."""
    where = error.filename if error.filename is not None else path
    cause = error.strerror or str(error)
    return cause if where is None else f"{where}: {cause}"


def entries(folder: Path) -> list[Path]:
    """What a folder holds, apart from a lock file."""
    return [p for p in folder.iterdir() if p.name != LOCK]


@dataclass
class Claim:
    """An output folder held by this process: ``made`` are the folders it created (outermost
    first), ``before`` the names the folder held when claimed."""

    path: Path
    made: list[Path]
    before: frozenset[str]
    fd: int
    removed: list[str] = field(default_factory=list)

    def added(self) -> list[Path]:
        return [p for p in entries(self.path) if p.name not in self.before]

    def discard(self) -> None:
        """Remove what this process added to the folder (the folders it made go on release)."""
        for path in self.added():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            self.removed.append(path.name)

    def release(self, remove_made: bool) -> None:
        """Drop the lock; with ``remove_made``, remove the folders this process made that are
        empty (another process may have claimed one meanwhile: it is then left alone)."""
        with suppress(OSError):
            (self.path / LOCK).unlink()
        os.close(self.fd)
        if remove_made:
            for folder in reversed(self.made):
                with suppress(OSError):
                    folder.rmdir()


@contextmanager
def claim(folder: str | Path, keep: Callable[[Path], bool] | None = None) -> Iterator[Claim]:
    """Hold ``folder`` (made if missing) for the block. If the block raises, what this process
    added is removed unless ``keep(folder)`` says it is worth keeping (a checkpoint to resume
    from); an :class:`~condseg.interrupt.Interrupted` is told which."""
    held = _acquire(Path(folder))
    kept = True
    try:
        yield held
    except BaseException as error:
        kept = keep is not None and keep(held.path)
        if not kept:
            held.discard()
        if isinstance(error, Interrupted):
            error.done.append(_outcome(held, kept))
        raise
    finally:
        held.release(remove_made=not kept)


def claims(*parameters: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function writing into the folders passed as ``parameters`` (None: not
    written) so that each is claimed for the call, before the function's work."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def claimed(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs).arguments
            given = [Path(bound[p]) for p in parameters if bound.get(p) is not None]
            folders = {folder.resolve(): folder for folder in given}  # one claim per folder
            with ExitStack() as stack:
                for folder in folders.values():
                    stack.enter_context(claim(folder))
                return function(*args, **kwargs)

        return claimed

    return decorate


def _outcome(held: Claim, kept: bool) -> str:
    if kept:
        return f"kept {held.path}"
    if held.made and held.made[-1] == held.path:
        return f"removed the unfinished {held.path}"
    if held.removed:
        return f"removed the {len(held.removed)} files it had written in {held.path}"
    return f"{held.path} unchanged"


@contextmanager
def staged(out: str | Path) -> Iterator[Path]:
    """A new folder ``out``, built in ``.NAME.partial`` beside it (yielded) and renamed to
    ``out`` when the block succeeds; removed when it fails. The partial folder is claimed, so a
    second process building ``out`` is refused, and a partial folder a killed process left is
    cleared and reused. ``out`` may exist as an empty folder (it is replaced at the end)."""
    out = Path(out)
    held = _acquire_partial(out)
    partial, done = held.path, False
    try:
        held.before = frozenset({STAGED})  # what a killed process left is cleared, its mark
        held.discard()  # kept (a kill in between leaves no partial folder unmarked)
        held.before = frozenset()
        held.removed.clear()
        (partial / STAGED).touch()
        yield partial
        try:
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            partial.rename(out)
        except OSError as error:
            raise OutputError(f"cannot create {out} ({describe(error)}); was it created by "
                              "another process meanwhile? Choose a new output folder") from error
        held.path, done = out, True
        (out / STAGED).unlink()  # after the rename: a kill in between leaves no unmarked partial
    except BaseException as error:
        if isinstance(error, Interrupted):
            error.done.append(f"removed the unfinished {partial}")
        raise
    finally:
        if not done:
            held.discard()
            if partial not in held.made:  # ours now, stale or not: removed with the lock
                held.made.append(partial)
        held.release(remove_made=not done)


def check_staged(out: str | Path) -> None:
    """Refuse now, before the long work, what :func:`staged` would refuse later (a place that
    cannot be written, another process building ``out``, a partial folder condseg did not
    make); nothing is left behind."""
    _acquire_partial(Path(out)).release(remove_made=True)


def _acquire_partial(out: Path) -> Claim:
    """The partial folder of ``out``, claimed: made now, or left by a condseg process (it
    holds :data:`STAGED`); a folder of that name the user made is refused, never emptied."""
    partial = out.with_name(f".{out.name}.partial")
    held = _acquire(partial)
    if partial not in held.made and not (partial / STAGED).is_file():
        held.release(remove_made=False)
        raise OutputError(f"{partial} is not a partial folder of condseg (it has no {STAGED} "
                          f"file), and it would be emptied to build {out}; move it away, or "
                          "choose another output folder")
    return held


def _acquire(folder: Path) -> Claim:
    """Make ``folder`` (and its missing parents) and lock it, or raise :class:`OutputError`."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder; choose a folder for the output")
    made: list[Path] = []
    try:
        for path in [*reversed(folder.parents), folder]:
            if not path.is_dir():
                try:
                    path.mkdir()
                    made.append(path)
                except FileExistsError:
                    if not path.is_dir():
                        raise OutputError(f"{path} is a file, so {folder} cannot be made in it; "
                                          "choose another output folder") from None
        before = frozenset(p.name for p in entries(folder))
        fd = _lock(folder / LOCK)
    except OSError as error:
        for path in reversed(made):
            with suppress(OSError):
                path.rmdir()
        raise OutputError(f"cannot write to {folder} ({describe(error, folder / LOCK)}); choose "
                          "a writable output folder with free space") from error
    except BaseException:
        for path in reversed(made):
            with suppress(OSError):
                path.rmdir()
        raise
    return Claim(folder, made, before, fd)


def _lock(path: Path) -> int:
    """An open, exclusively locked ``path`` holding this process's PID and start time. The
    file found is re-checked after locking: a holder that ended meanwhile unlinked it. Only a
    regular file of one name is a lock: a link is never followed (nor a FIFO waited on), so
    the file written is never one of the user's (:func:`_foreign`)."""
    while True:
        try:
            fd = os.open(path, _LOCK_FLAGS, 0o644)
        except OSError as error:  # a folder (EISDIR), a link (ELOOP), a socket (ENXIO)...
            with suppress(OSError):
                if not _is_lock(found := os.lstat(path)):
                    raise _foreign(path, found) from error
            raise
        try:
            found = os.fstat(fd)
            if not _is_lock(found):
                raise _foreign(path, found)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputBusyError(
                f"{path.parent} is in use by another condseg process ({holder}); wait for it "
                "to end, or choose another output folder") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.lstat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        record = {"pid": os.getpid(),
                  "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_lock(found: os.stat_result) -> bool:
    return stat.S_ISREG(found.st_mode) and found.st_nlink <= 1  # some file systems say 0


def _foreign(path: Path, found: os.stat_result) -> OutputError:
    """The one line for a lock path that holds something else than a lock file."""
    kind = mode_kind(found.st_mode) or f"a file with {found.st_nlink} names (hard links)"
    return OutputError(f"{path} is {kind}, not a lock file of condseg, which never writes "
                       "through it; move it away, or choose another output folder")


def _holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"PID {record['pid']}, started {record['started']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "PID unknown: it is still starting"
