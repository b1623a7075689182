"""Issue 23, files: every file condseg writes is staged beside its destination (never in
``$TMPDIR``); a full disk is one error naming the file and its folder's free space, also when the
library's OSError has no errno; what a killed process left half-written is read safely and
cleared on resume; ``progress_bar=false`` keeps the epoch lines; finished runs can be pruned.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import resource
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from condseg import cli
from condseg.config import load_config
from condseg.data.split_files import write_split
from condseg.data.synthetic import synthesize
from condseg.epoch_log import write_epoch_log
from condseg.errors import OutputError
from condseg.files import atomic_file, clear_staged
from condseg.inference.predict import save_probability
from condseg.layout import RunDir, StageDir
from condseg.models.model_file import save_model
from condseg.models.registry import create_model
from condseg.outputs import claim
from condseg.training import train
from condseg.training.checkpoints import PREVIOUS_SUFFIX, AtomicCheckpointIO, previous_of
from condseg.training.progress import ProgressLines, progress_callbacks
from condseg.training.results import StageResult
from condseg.viz import plot_curves, save_png

TINY = ["data.size=64", "data.batch_size=2", "data.num_workers=0", "model.options.width=16",
        "train_stages=[stage1]", "stages.stage1.max_epochs=1", "progress_bar=false",
        "log_every_n_steps=1", "checkpoint_every_minutes=null"]
SHORT_WRITE = "65536 requested and 47072 written"  # numpy's short write: an OSError, no errno


def _one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def _staged(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.is_file()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth"), n_train=4, n_val=2, size=64)


@contextmanager
def tmpdir_refused(missing: Path) -> Iterator[None]:
    """``$TMPDIR`` that cannot be used within the block: ``missing`` (a folder that does not
    exist), and every way into the temporary folder refused (Python would quietly fall back to
    /tmp otherwise)."""
    import matplotlib.pyplot  # noqa: F401  (its cache folder is found once, when imported)

    def refused() -> str:
        raise AssertionError("a file was staged in $TMPDIR instead of beside its destination")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(missing))
        patch.setattr(tempfile, "tempdir", None)
        patch.setattr(tempfile, "gettempdir", refused)
        patch.setattr(tempfile, "gettempdirb", refused)
        yield
    assert not missing.exists()


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny run trained as a batch job would (progress_bar=false, output not a terminal),
    with nothing to stage its files in but their own folders."""
    run = tmp_path_factory.mktemp("runs") / "run"
    console = Console(record=True, width=200, force_terminal=False, soft_wrap=True)
    with tmpdir_refused(tmp_path_factory.mktemp("gone") / "tmpdir"):
        result = train(load_config("demo", TINY), data, run, console=console)
    return {"run": run, "result": result, "console": console.export_text()}


# --- 1: temporary files beside their destination --------------------------------------------


def test_training_and_the_commands_after_it_stage_nothing_in_tmpdir(
    trained: dict, data: Path, tmp_path: Path
) -> None:
    """Checkpoints (Lightning would stage them in $TMPDIR), the stage's table, figure, model
    file and result, the run's evaluation; then evaluate with probabilities, predict with
    maps, and the ONNX export (torch's stderr is held beside the output) — all with $TMPDIR
    unusable."""
    run, model = trained["run"], trained["result"].model_file
    stage = RunDir(run).stage("stage1")
    for path in (stage.last_checkpoint, stage.metrics, stage.curves, stage.model_file,
                 stage.result, run / "config.yaml", run / "evaluation" / "val" / "summary.json"):
        assert path.is_file(), path
    out = tmp_path / "out"
    runner = CliRunner()
    commands = [
        ["evaluate", str(model), "--data", str(data), "--out", str(out / "eval"), "--workers",
         "0", "--save-probabilities", str(out / "prob"), "--probability-format", "npy",
         "--resolution", "original"],  # not the run's own protocol: compare takes both
        ["predict", str(model), str(data / "images"), "--out", str(out / "pred"), "--workers",
         "0", "--overlay"],
        ["compare", str(out / "eval"), str(run), "--out", str(out / "compare")],
    ]
    if _has("onnx"):  # (not installed everywhere)
        commands.append(["export", str(model), "--out", str(out / "model.onnx")])
    with tmpdir_refused(tmp_path / "tmpdir"):
        for argv in commands:
            result = runner.invoke(cli.app, argv)
            assert result.exit_code == 0, (argv, result.output)
    assert len(list((out / "prob").glob("*_prob.npy"))) == 2
    assert (out / "eval" / "summary.json").is_file() and (out / "compare").is_dir()
    assert not _staged(out) and not _staged(run)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A folder ``out`` whose disk is full: every file staged in it is a link to /dev/full, so
    each write gets the kernel's own ENOSPC through the real writers (torch, numpy,
    matplotlib, OpenCV's bytes, csv)."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    out = tmp_path / "out"
    out.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        if Path(name).parent.is_relative_to(out):
            os.close(fd)
            os.unlink(name)
            os.symlink("/dev/full", name)
            fd = os.open(name, os.O_WRONLY)
        return fd, name

    def unnoticed() -> int:
        raise AssertionError("a write to a full disk went unnoticed")

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr("condseg.files.current_umask", unnoticed)
    return out


@contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """Writes past ``size`` bytes fail with the kernel's EFBIG (as a quota does): how a
    writer that stages its own file (safetensors) meets a full disk here."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _stage_log(stage: Path) -> Path:
    version = stage / "csv" / "version_0"
    version.mkdir(parents=True, exist_ok=True)
    (version / "metrics.csv").write_text(
        "epoch,step,train/loss_epoch,val/loss,val/miou\n0,1,0.5,0.4,0.6\n")
    return stage


def _epoch_table(folder: Path) -> Path:
    path = folder / "metrics.csv"
    path.write_text("epoch,train_loss,val_mask_loss,val_miou\n1,0.5,0.4,60\n2,0.4,0.3,70\n")
    return path


WRITERS: dict[str, Callable[[Path], Path]] = {
    "checkpoint": lambda out: (AtomicCheckpointIO().save_checkpoint(
        {"weights": torch.zeros(4096)}, out / "last.ckpt"), out / "last.ckpt")[1],
    "model file": lambda out: save_model(
        out / "model.safetensors", create_model("condseg", encoder="resnet18", width=16),
        mean=None, std=None, input_size=64),
    "probability map (npy)": lambda out: save_probability(out / "a_prob.npy",
                                                          np.full((64, 64), 0.5)),
    "mask (png)": lambda out: save_png(out / "a.png", np.zeros((64, 64), np.uint8)),
    "curves (matplotlib)": lambda out: plot_curves(_epoch_table(out.parent), out / "curves.png"),
    "epoch table (csv)": lambda out: write_epoch_log(_stage_log(out)),
    "stage result (json)": lambda out: (StageResult("m", None, 1, False, {}).write(
        StageDir(out)), out / "result.json")[1],
    "split file": lambda out: (write_split(out / "train.txt", ["a", "b"]),
                               out / "train.txt")[1],
    "dataset images": lambda out: synthesize(out / "synth", n_train=1, n_val=1, size=32),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_full_disk_is_one_error_naming_the_file_its_folder_and_the_free_space(
    writer: str, full_disk: Path
) -> None:
    """Whatever the writer, a file that was there stays as it was and nothing half-written or
    staged is left."""
    before = {"last.ckpt": b"the checkpoint before", "curves.png": b"the figure before"}
    for name, content in before.items():
        (full_disk / name).write_bytes(content)
    with pytest.raises(OutputError) as caught, file_size_limit(4096):
        WRITERS[writer](full_disk)
    message = str(caught.value)
    cause = "File too large" if writer == "model file" else "No space left on device"
    assert f"({cause}): " in message and " free; make room there" in message
    target = message.removeprefix("cannot write ").partition(" (")[0]
    folder = message.partition("): ")[2].partition(" has ")[0]
    assert Path(target).parent == Path(folder) and Path(folder).is_relative_to(full_disk)
    for name, content in before.items():
        assert (full_disk / name).read_bytes() == content
    assert not previous_of(full_disk / "last.ckpt").exists()
    assert not _staged(full_disk)


def test_the_short_write_numpy_reports_without_an_errno_is_named_in_evaluate(
    trained: dict, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``evaluate --save-probabilities``: numpy's errno-less OSError was a traceback."""
    prob = tmp_path / "prob"
    real = Path.write_bytes

    def short(self: Path, content) -> int:
        if self.parent == prob:
            raise OSError(SHORT_WRITE)
        return real(self, content)

    monkeypatch.setattr(Path, "write_bytes", short)
    result = CliRunner().invoke(cli.app, [
        "evaluate", str(trained["result"].model_file), "--data", str(data), "--workers", "0",
        "--out", str(tmp_path / "eval"), "--save-probabilities", str(prob),
        "--probability-format", "npy"])
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert line.startswith(f"error: cannot write {prob}/") and f"({SHORT_WRITE}): {prob} has " \
        in line and "free; make room there" in line
    assert not (tmp_path / "eval").exists()  # a failed command leaves no half output


def test_a_full_disk_during_training_names_the_stage_folder(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning's own logs write without naming a file; the run is kept to resume."""
    from lightning.fabric.loggers.csv_logs import _ExperimentWriter

    def full(self) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_ExperimentWriter, "save", full)
    run = tmp_path / "run"
    result = CliRunner().invoke(cli.app, ["train", "--data", str(data), "--config", "demo",
                                          "--out", str(run), *TINY])
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = result.output.splitlines()[-1]
    stage = run / "stage1"
    assert line.startswith(f"error: cannot write into {stage} (No space left on device): it "
                           "has "), line
    assert line.endswith(" free; make room there, or write the output elsewhere")


def test_only_the_machines_errors_are_turned_into_a_write_error(tmp_path: Path) -> None:
    """A file the block expected and did not find is a bug: it keeps its own error."""
    with pytest.raises(FileNotFoundError), atomic_file(tmp_path / "a.txt"):
        (tmp_path / "missing.txt").read_text()
    with pytest.raises(OutputError, match=rf"a.txt \({SHORT_WRITE}\): {tmp_path} has "), \
            atomic_file(tmp_path / "a.txt"):
        raise OSError(SHORT_WRITE)
    assert list(tmp_path.iterdir()) == []


def test_a_name_that_fits_the_folder_is_written_and_one_that_does_not_is_named(
    tmp_path: Path
) -> None:
    """The staged sibling is longer than its destination: a name that fits (250 bytes, as a
    user's image name may be; multi-byte too) is still written, and one that does not fit is
    named with advice about names, not about writable folders."""
    fits = [tmp_path / ("a" * 246 + ".png"), tmp_path / ("é" * 123 + ".png")]
    for path in fits:
        save_png(path, np.zeros((4, 4), np.uint8))
        assert path.is_file()
    with pytest.raises(OutputError, match="the name is longer than this file system takes"):
        save_png(tmp_path / ("b" * 256 + ".png"), np.zeros((4, 4), np.uint8))
    assert sorted(tmp_path.iterdir()) == sorted(fits)


# --- 5: what a killed process left half-written -----------------------------------------------

LIGHTNING_HEADER = "epoch,lr-Adam,step,train/loss_epoch,train/loss_step,val/loss,val/miou\n"


def test_lightning_logs_a_kill_left_half_written_are_read_for_what_they_hold(
    tmp_path: Path
) -> None:
    """One attempt's log per way a kill leaves it: whole, empty, only learning rates flushed
    (no ``epoch`` column yet), a torn last row (cut inside a number, or short of cells)."""
    logs = {
        0: LIGHTNING_HEADER + ",0.001,0,,,,\n0,,0,,0.9,,\n0,,1,,,0.5,0.6\n0,,1,0.8,,,\n",
        1: "",
        2: "lr-Adam,step\n0.001,2\n",
        3: LIGHTNING_HEADER + "1,,3,,0.7,,\n1,,3,,,0.4,0.7\n1,,3,0.6",
        4: LIGHTNING_HEADER + "2,,5,,0.5,,\n2,,5,,,0.3,0.8\n2,,5,0.4,,,\n2,,6,,0.4e",
    }
    for version, text in logs.items():
        path = tmp_path / "csv" / f"version_{version}" / "metrics.csv"
        path.parent.mkdir(parents=True)
        path.write_text(text)
    with (write_epoch_log(tmp_path)).open() as f:
        rows = {int(r["epoch"]): r for r in csv.DictReader(f)}
    assert sorted(rows) == [1, 2, 3]
    assert float(rows[1]["train_loss"]) == 0.8 and float(rows[1]["val_miou"]) == 60
    assert float(rows[2]["train_loss"]) == 0.7  # the torn epoch mean: its steps' mean
    assert float(rows[3]["train_loss"]) == 0.4 and float(rows[3]["val_miou"]) == 80
    assert not _staged(tmp_path)


def test_a_resume_clears_what_a_killed_process_was_writing(tmp_path: Path) -> None:
    """Staged files (condseg's and safetensors') go; the user's own files stay."""
    run = RunDir(tmp_path / "run")
    checkpoints = run.stage("stage1").checkpoints
    checkpoints.mkdir(parents=True)
    left = [checkpoints / ".last.ckpt.k3j_9x0a.tmp", run.path / "stage1" / ".tmpAb12Cd",
            run.path / "evaluation" / "val" / ".summary.json.0a1b2c3d.tmp"]
    mine = [run.path / "notes.tmp", run.path / ".my.tmp", checkpoints / "last.ckpt"]
    for path in [*left, *mine]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert sorted(clear_staged(run.path)) == sorted(left)
    assert all(p.exists() for p in mine) and not any(p.exists() for p in left)


def test_a_run_killed_twice_resumes_extends_and_ends_clean(
    trained: dict, data: Path, tmp_path: Path
) -> None:
    """What two kills leave — a log begun without its header, an empty one, a checkpoint
    half-staged, the checkpoint before the last, a torn line in train.log — does not stop
    the resumed run at its end, and the finished run keeps none of it."""
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    stage = RunDir(run).stage("stage1")
    for version, text in ((1, "lr-Adam,step\n0.001,2\n"), (2, "")):
        (stage.csv_logs / f"version_{version}").mkdir()
        (stage.csv_logs / f"version_{version}" / "metrics.csv").write_text(text)
    (stage.checkpoints / ".last.ckpt.x1y2z3w4.tmp").write_bytes(b"half a checkpo")
    shutil.copy(stage.last_checkpoint, previous_of(stage.last_checkpoint))
    with (run / "train.log").open("a") as f:
        f.write("stage1 epoch 2/2 step 1/2 lo")
    console = Console(record=True, width=200, force_terminal=False)
    train(load_config("demo", [*TINY, "stages.stage1.max_epochs=2"]), data, run, resume=True,
          console=console)
    assert [int(r["epoch"]) for r in csv.DictReader(stage.metrics.open())] == [1, 2]
    assert not _staged(run) and not list(run.rglob(f"*{PREVIOUS_SUFFIX}"))
    log = (run / "train.log").read_text().splitlines()
    torn = log.index("stage1 epoch 2/2 step 1/2 lo")
    assert any(line.startswith("stage1 epoch 2/2: train loss") for line in log[torn + 1:])


# --- 7: the epoch lines of a batch job --------------------------------------------------------


def test_progress_bar_false_keeps_the_epoch_lines_in_the_output_and_train_log(
    trained: dict
) -> None:
    """``progress_bar=false`` (what batch jobs set) drops the bar and the step lines only."""
    log = (trained["run"] / "train.log").read_text()
    for text in (trained["console"], log):
        assert re.search(r"^stage1 epoch 1/1: train loss \d+\.\d{4}, val L_mask .* mIoU "
                         r"\d+\.\d\d%", text, re.MULTILINE), text
        assert " step " not in text


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_off_prints_each_epoch_where_the_run_log_copies_it(terminal: bool) -> None:
    """On a terminal too: the lines go to the console, which train.log copies."""
    console = Console(force_terminal=terminal)
    callbacks = progress_callbacks(console, "stage1", False, 50, log=Console())
    assert len(callbacks) == 1 and isinstance(callbacks[0], ProgressLines)
    assert callbacks[0].console is console and callbacks[0].every_n_steps is None


# --- 7: what a finished run keeps, and pruning it ----------------------------------------------


def test_a_finished_run_says_what_it_keeps_to_be_extended_and_how_to_remove_it(
    trained: dict
) -> None:
    run = trained["run"]
    assert ("kept to extend this run with more epochs: stage1/checkpoints/last.ckpt ("
            in trained["console"])
    assert f"`condseg prune {run}` removes them, keeping the model files" in trained["console"]
    assert "condseg prune" in (run / "train.log").read_text()


def test_prune_removes_only_what_finished_stages_keep_to_be_extended(
    trained: dict, data: Path, tmp_path: Path
) -> None:
    """Over a study-like folder: a finished run, an unfinished one (it resumes from its
    checkpoint) and a run in use. A dry run removes nothing; a pruned stage says why it
    cannot be extended, and is still reused as finished."""
    study = tmp_path / "study"
    done, unfinished, busy = (study / "runs" / name for name in ("done", "unfinished", "busy"))
    for run in (done, unfinished, busy):
        shutil.copytree(trained["run"], run)
    (unfinished / "stage1" / "result.json").unlink()
    shutil.copy(done / "stage1" / "checkpoints" / "last.ckpt",
                done / "stage1" / "checkpoints" / "last.previous.ckpt")
    checkpoints = sorted(study.rglob("*.ckpt"))
    runner = CliRunner()

    dry = runner.invoke(cli.app, ["prune", str(study), "--dry-run"])
    assert dry.exit_code == 0 and f"would remove {done / 'stage1/checkpoints/last.ckpt'} (" \
        in dry.output
    assert sorted(study.rglob("*.ckpt")) == checkpoints
    with claim(busy):
        result = runner.invoke(cli.app, ["prune", str(study)])
    assert result.exit_code == 0, result.output
    assert f"left alone: {busy} is in use by another condseg process" in result.output
    assert "removed 2 checkpoint(s)" in result.output
    assert sorted(study.rglob("*.ckpt")) == sorted(
        p for p in checkpoints if p.is_relative_to(unfinished) or p.is_relative_to(busy))
    assert (done / "stage1" / "model.safetensors").is_file()

    config = (done / "config.yaml").read_bytes()
    extend = runner.invoke(cli.app, ["train", "--resume", str(done), "--data", str(data),
                                     "stages.stage1.max_epochs=2"])
    assert extend.exit_code == 2
    assert (f"({done / 'stage1/checkpoints/last.ckpt'} was removed, by condseg prune or by "
            "hand)") in extend.output.splitlines()[-1]
    assert (done / "config.yaml").read_bytes() == config  # the refused start changed nothing
    again = runner.invoke(cli.app, ["train", "--resume", str(done), "--data", str(data)])
    assert again.exit_code == 0 and "stage1 already finished" in again.output, again.output
