"""Issue 15, classes 1, 3 and 7, for every command that writes a folder (train, cv,
evaluate --out, predict --out, data prepare): a folder in use by another process is refused
naming it, a failed start removes only what its process made, a folder that cannot be written
is one line naming path and cause before any long work, and Ctrl-C or SIGTERM ends with one
line, status 130, and no half-written output. Locks and signals are real: the holders and the
interrupted commands are separate processes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from condseg import cli
from condseg.outputs import LOCK, OutputBusyError, OutputError, claim, staged

TINY = ["data.size=64", "data.batch_size=2", "data.num_workers=0", "model.options.width=16",
        "stages.stage1.max_epochs=30", "stages.stage2.max_epochs=1", "progress_bar=false",
        "log_every_n_steps=1", "checkpoint_every_n_steps=1", "checkpoint_every_minutes=null"]

# Runs the real CLI in a child process; PATCH (module, attribute, call number) makes that call
# write a marker and wait there to be signalled.
CHILD = """
import importlib, sys, time
from pathlib import Path

module, attribute, call, marker = sys.argv[1:5]
owner_name, _, attr = attribute.rpartition(".")
owner = importlib.import_module(module)
for part in filter(None, owner_name.split(".")):
    owner = getattr(owner, part)
original, calls = getattr(owner, attr), []

def waiting(*args, **kwargs):
    calls.append(1)
    if len(calls) == int(call):
        Path(marker).write_text("here")
        time.sleep(120)
    return original(*args, **kwargs)

setattr(owner, attr, waiting)
from condseg.cli import app
app(sys.argv[5:], prog_name="condseg")
"""

HOLDER = """
import sys, time
from pathlib import Path
from condseg.outputs import claim, staged
kind, folder = sys.argv[1:3]
with (staged(Path(folder)) if kind == "staged" else claim(Path(folder))) as held:
    path = held if kind == "staged" else held.path
    (path / "winner.txt").write_text("mine")
    print("held", flush=True)
    time.sleep(120)
"""


def _env() -> dict[str, str]:
    src = str(Path(cli.__file__).parents[2])  # src/condseg/cli/__init__.py
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400",
            "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def _start(script: str, args: list[str], tmp_path: Path) -> subprocess.Popen:
    path = tmp_path / f"child-{len(list(tmp_path.glob('child-*')))}.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.Popen([sys.executable, str(path), *args], env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(child: subprocess.Popen, ready, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the child ended or hung: {child.communicate()[0][-3000:]}")
        time.sleep(0.05)


def _commands(data: Path, model_file: Path, out: Path) -> dict[str, list[str]]:
    """Each command that writes a folder, writing into ``out``."""
    return {
        "train": ["train", "--data", str(data), "--config", "demo", "--out", str(out), *TINY],
        "cv": ["cv", "--data", str(data), "--config", "demo", "--seeds", "0", "--out", str(out),
               *TINY],
        "evaluate": ["evaluate", str(model_file), "--data", str(data), "--out", str(out),
                     "--workers", "0"],
        "predict": ["predict", str(model_file), str(data / "images"), "--out", str(out),
                    "--workers", "0"],
        "data prepare": ["data", "prepare", "folder", str(data / "images"), str(data / "masks"),
                         str(out)],
    }


def _one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


# --- class 1: concurrent and repeated runs ------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "cv", "evaluate", "predict", "data prepare"])
def test_a_folder_in_use_is_refused_naming_the_holder_and_left_intact(
    command: str, data: Path, model_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    kind = "staged" if command == "data prepare" else "claim"
    holder = _start(HOLDER, [kind, str(out)], tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(cli.app, _commands(data, model_file, out)[command])
        line = _one_line(result.output)
        assert result.exit_code == 2
        assert f"in use by another condseg process (PID {holder.pid}, started 20" in line
        held = out.with_name(".out.partial") if kind == "staged" else out
        assert (held / "winner.txt").read_text() == "mine"  # the winner's folder survives
        assert (held / LOCK).is_file()
    finally:
        holder.kill()
        holder.wait(30)


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = _start(HOLDER, ["claim", str(out)], tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match=f"PID {holder.pid}"), claim(out):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    assert json.loads((out / LOCK).read_text())["pid"] == holder.pid  # stale, left behind
    with claim(out) as held:
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
        assert held.before == {"winner.txt"}
    assert not (out / LOCK).exists() and (out / "winner.txt").is_file()


def test_a_failed_start_removes_only_what_its_process_made(tmp_path: Path) -> None:
    user_made = tmp_path / "mine"
    user_made.mkdir()
    (tmp_path / "mine-too").mkdir()
    (tmp_path / "mine-too" / "notes.txt").write_text("keep")
    for folder in (user_made, tmp_path / "mine-too", tmp_path / "new" / "deeper" / "out"):
        with pytest.raises(RuntimeError), claim(folder):
            (folder / "config.yaml").write_text("half")
            raise RuntimeError("failed start")
    assert user_made.is_dir() and not any(user_made.iterdir())  # the user's empty folder stays
    assert [p.name for p in (tmp_path / "mine-too").iterdir()] == ["notes.txt"]
    assert not (tmp_path / "new").exists()  # every folder this process made is gone


def test_a_failed_train_keeps_the_users_empty_out_folder(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "made-by-me"
    out.mkdir()
    missing = tmp_path / "missing.safetensors"
    result = CliRunner().invoke(cli.app, [
        "train", "--data", str(data), "--config", "demo", "--out", str(out), *TINY,
        "model.pretrained=true", f"model.weights={missing}"])
    assert result.exit_code == 2 and "weights file not found" in result.output
    assert out.is_dir() and not any(out.iterdir())


def test_a_partial_folder_of_a_killed_prepare_is_cleared_by_the_rerun(
    data: Path, tmp_path: Path
) -> None:
    from condseg.data.prepare import prepare_folder

    out = tmp_path / "prepared"
    holder = _start(HOLDER, ["staged", str(out)], tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    partial = tmp_path / ".prepared.partial"
    assert (partial / "winner.txt").is_file() and not out.exists()
    prepare_folder(data / "images", data / "masks", out)
    assert not partial.exists() and (out / "split_info.json").is_file()
    assert not (out / LOCK).exists() and not (out / "winner.txt").exists()


# --- class 3: filesystem errors --------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "cv", "evaluate", "predict", "data prepare"])
def test_an_out_that_is_a_file_is_one_line_naming_it(
    command: str, data: Path, model_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "taken"
    out.write_text("a file of the user's")
    result = CliRunner().invoke(cli.app, _commands(data, model_file, out)[command])
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert str(out) in line and ("is a file" in line or "not an empty folder" in line)
    assert out.read_text() == "a file of the user's"


# The long work of each command, which must not start before its output is found unusable.
WORK = {"train": ("condseg.training.run", "check_data"),
        "evaluate": ("condseg.evaluation.evaluate", "check_dataset"),
        "predict": ("condseg.inference.predict", "Predictor"),
        "data prepare": ("condseg.data.prepare.pipeline", "find_files")}


@pytest.mark.parametrize("command", list(WORK))
def test_an_out_inside_a_file_is_one_line_naming_the_file(
    command: str, data: Path, model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    def never(*args, **kwargs):
        raise AssertionError("the work started before the output was checked")

    module, attribute = WORK[command]
    monkeypatch.setattr(importlib.import_module(module), attribute, never)
    parent = tmp_path / "file"
    parent.write_text("x")
    result = CliRunner().invoke(cli.app, _commands(data, model_file, parent / "out")[command])
    assert result.exit_code == 2
    assert f"{parent} is a file" in _one_line(result.output)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_an_unwritable_out_is_refused_before_the_work(
    code: int, data: Path, model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only, forbidden or full file system (simulated at the system call: the tests run
    as root, for whom permissions do not apply) is found before the dataset is even read."""
    import condseg.evaluation.evaluate as evaluation

    out = tmp_path / "out"
    real_open = os.open

    def refusing(path, *args, **kwargs):
        if str(path).startswith(str(out)):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *args, **kwargs)

    def never(*args, **kwargs):
        raise AssertionError("the work started before the output was checked")

    monkeypatch.setattr(os, "open", refusing)
    monkeypatch.setattr(evaluation, "check_dataset", never)
    result = CliRunner().invoke(cli.app, _commands(data, model_file, out)["evaluate"])
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert f"cannot write to {out} ({out / LOCK}: {os.strerror(code)})" in line
    assert not out.exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_disk_that_fills_during_predict_is_one_line_and_no_half_output(
    data: Path, model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ENOSPC from the kernel: the third mask's staged file is a link to /dev/full."""
    out = tmp_path / "masks"
    third = out / f"{sorted((data / 'images').iterdir())[2].stem}.png"
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        if Path(name).name.startswith(f".{third.name}."):
            os.close(fd)
            os.unlink(name)
            os.symlink("/dev/full", name)
            fd = os.open(name, os.O_WRONLY)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    result = CliRunner().invoke(cli.app, _commands(data, model_file, out)["predict"])
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert line.startswith(f"error: cannot write {third} (No space left on device): {out} has ")
    assert not out.exists()  # the two masks written before are removed, and the folder


def test_a_folder_where_a_file_goes_is_refused_even_with_overwrite(
    data: Path, model_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    (out / "summary.json").mkdir(parents=True)
    argv = [*_commands(data, model_file, out)["evaluate"], "--overwrite"]
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 2
    assert _one_line(result.output) == (
        f"error: {out / 'summary.json'} is a folder where a file is to be written; move it "
        "away or choose another output folder")
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


def test_an_oserror_of_a_bug_keeps_its_traceback() -> None:
    """Only the machine's errors (full, read-only, forbidden, ...) become one line; a file we
    expected and did not find, or an OSError without an errno, is a bug."""
    with pytest.raises(FileNotFoundError), cli.user_errors():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/where/we/expected")
    with pytest.raises(OSError, match="could not"), cli.user_errors():
        raise OSError("could not do what we meant to")
    with pytest.raises(typer.Exit), cli.user_errors():
        raise OSError(errno.ENOSPC, "No space left on device")  # a write names no file


def test_staged_refuses_an_out_created_meanwhile(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="created by another process meanwhile"), \
            staged(out) as partial:
        (partial / "a.txt").write_text("x")
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert not (tmp_path / ".out.partial").exists()


# --- class 7: interruption -------------------------------------------------------------------


def _interrupt(
    target: tuple[str, str, int], argv: list[str], signum: int, tmp_path: Path
) -> tuple[int, str]:
    """Run ``condseg argv`` in a child, signal it where ``target`` (module, attribute, call)
    is reached; its status and output."""
    marker = tmp_path / "marker"
    child = _start(CHILD, [target[0], target[1], str(target[2]), str(marker), *argv], tmp_path)
    try:
        _wait_for(child, marker.exists)
        child.send_signal(signum)
        output, _ = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait(30)
    return child.returncode, output


@pytest.mark.slow
def test_an_interrupted_training_keeps_its_checkpoints_and_says_how_to_resume(
    data: Path, model_file: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    argv = _commands(data, model_file, run)["train"]
    step = ("condseg.training.module", "SegmentationModule.training_step", 3)
    # SIGTERM, as a scheduler sends it: Lightning's own SIGTERM handler runs first (it would
    # end the fit with status 0 at the end of the batch), then ours
    code, output = _interrupt(step, argv, signal.SIGTERM, tmp_path)
    assert code == 130, output
    last_line = output.strip().splitlines()[-1]
    assert last_line == (f"interrupted: stopped by SIGTERM: kept {run}; continue with: "
                         f"condseg train --resume {run}")
    assert (run / "stage1" / "checkpoints" / "last.ckpt").is_file()
    assert not (run / LOCK).exists()


def _signal_at(
    monkeypatch: pytest.MonkeyPatch, owner: object, attribute: str, call: int, signum: int
) -> None:
    """Send ``signum`` to this very process at the ``call``-th call of ``owner.attribute``."""
    original, calls = getattr(owner, attribute), []

    def signalling(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, signalling)


@pytest.mark.parametrize(("command", "target", "signum", "expected"), [
    ("evaluate", ("condseg.evaluation.evaluate", "image_metrics", 2), signal.SIGTERM,
     "stopped by SIGTERM: removed the unfinished {out}"),
    ("predict", ("condseg.inference.predict", "save_png", 3), signal.SIGINT,
     "stopped by SIGINT: removed the 2 files it had written in {out}"),
    ("data prepare", ("condseg.data.prepare.pipeline", "_write_sample", 3), signal.SIGTERM,
     "stopped by SIGTERM: removed the unfinished {partial}"),
])
def test_an_interrupted_command_leaves_no_half_output(
    command: str, target: tuple[str, str, int], signum: int, expected: str, data: Path,
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    out = tmp_path / "out"
    if command == "predict":  # the user's own folder, with a file of theirs
        out.mkdir()
        (out / "readme.txt").write_text("mine")
    module, attribute, call = target
    _signal_at(monkeypatch, importlib.import_module(module), attribute, call, signum)
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    result = CliRunner().invoke(cli.app, _commands(data, model_file, out)[command])
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output
    last_line = result.output.strip().splitlines()[-1]  # after the progress lines
    partial = tmp_path / ".out.partial"
    assert last_line == "interrupted: " + expected.format(out=out, partial=partial)
    assert not partial.exists()
    if command == "predict":
        assert [p.name for p in out.iterdir()] == ["readme.txt"]
    else:
        assert not out.exists()
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers


def test_an_interrupted_cross_validation_says_how_to_resume(
    data: Path, model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped as it starts a run, with a checkpoint of an earlier attempt in the folder."""
    import condseg.training.cv as cv

    cv_dir = tmp_path / "cv"
    (cv_dir / "seed0" / "stage1" / "checkpoints").mkdir(parents=True)
    (cv_dir / "seed0" / "stage1" / "checkpoints" / "last.ckpt").write_bytes(b"earlier")
    _signal_at(monkeypatch, cv, "train", 1, signal.SIGTERM)
    result = CliRunner().invoke(cli.app, _commands(data, model_file, cv_dir)["cv"])
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"interrupted: stopped by SIGTERM: kept {cv_dir}; continue with: condseg cv --out "
        f"{cv_dir} --resume --seeds 0")
    assert (cv_dir / "config.yaml").is_file() and not list(cv_dir.rglob(LOCK))
