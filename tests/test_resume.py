"""A training run killed with SIGKILL resumes and finishes, losing at most one checkpoint
interval: mid-epoch, during a checkpoint write, and between the stages. Damaged checkpoints
fall back to the one before them."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

from condseg.config import load_config
from condseg.data.synthetic import synthesize
from condseg.layout import StageDir
from condseg.models.model_file import load_model
from condseg.training import train
from condseg.training.checkpoints import RunCheckpoint, previous_of, resume_point

OVERRIDES = [
    "data.size=64", "data.batch_size=2", "data.num_workers=0", "model.options.width=16",
    "stages.stage1.max_epochs=2", "stages.stage2.max_epochs=1", "progress_bar=false",
    "log_every_n_steps=1", "checkpoint_every_n_steps=1", "checkpoint_every_minutes=null",
]

# The child trains and, at the chosen moment, writes a marker and waits to be killed there.
CHILD = """
import sys, time
from pathlib import Path
import torch
from condseg.config import load_config
from condseg.training import stage, train
from condseg.training.module import SegmentationModule

moment, data, out, marker = sys.argv[1:5]
overrides = sys.argv[5:]

def wait_for_the_kill():
    Path(marker).write_text(moment)
    time.sleep(600)

if moment == "mid-epoch":  # before the third step of the second epoch
    step = SegmentationModule.training_step
    def training_step(self, batch, i):
        if self.current_epoch == 1 and i == 2:
            wait_for_the_kill()
        return step(self, batch, i)
    SegmentationModule.training_step = training_step
elif moment == "checkpoint-write":  # the sixth checkpoint file, half written
    save, calls = torch.save, []
    def half_save(checkpoint, f, *args, **kwargs):  # what AtomicCheckpointIO writes with
        calls.append(f)
        save(checkpoint, f, *args, **kwargs)
        if len(calls) == 6:
            f.truncate(f.tell() // 2)
            f.flush()
            wait_for_the_kill()
    torch.save = half_save
elif moment == "between-stages":
    build = stage._build_model
    def build_model(plan, *args, **kwargs):
        if plan.name == "stage2":
            wait_for_the_kill()
        return build(plan, *args, **kwargs)
    stage._build_model = build_model

train(load_config("demo", overrides), data, out)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth"), n_train=8, n_val=2, size=64)


def _kill_at(moment: str, data: Path, run: Path, tmp_path: Path) -> None:
    script, marker = tmp_path / "child.py", tmp_path / "marker"
    script.write_text(textwrap.dedent(CHILD))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(script), moment, str(data), str(run),
                              str(marker), *OVERRIDES], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the child ended before {moment}: {child.communicate()[0][-3000:]}")
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()


def _epochs(stage_dir: Path) -> list[int]:
    """The epochs of the stage's table that have both a training and a validation loss."""
    with (stage_dir / "metrics.csv").open() as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)
                if r.get("train_loss") and r.get("val_mask_loss")]


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["mid-epoch", "checkpoint-write", "between-stages"])
def test_a_killed_run_resumes_and_finishes(moment: str, data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _kill_at(moment, data, run, tmp_path)
    last = run / "stage1" / "checkpoints" / "last.ckpt"
    killed_at = torch.load(last, weights_only=True)["global_step"] if last.is_file() else None
    console = Console(record=True, width=200)
    result = train(load_config("demo", OVERRIDES), data, run, resume=True, console=console)

    model = load_model(result.model_file)
    assert model.name == "condseg" and list(result.model_files) == ["stage1", "stage2"]
    epochs = _epochs(run / "stage1")
    # Two epochs, each one row: nothing repeated, nothing lost from the log.
    assert epochs == [1, 2], epochs
    versions = sorted((run / "stage1" / "csv").glob("version_*"))
    if moment == "between-stages":
        assert len(versions) == 1  # stage 1 had finished: it is not trained again
        assert "stage1 already finished" in console.export_text()
    else:
        # The resumed attempt started at the newest complete checkpoint: at most one step lost.
        with (versions[-1] / "metrics.csv").open() as f:
            first = min(int(r["step"]) for r in csv.DictReader(f))
        assert killed_at is not None and first == killed_at
        assert killed_at >= (6 if moment == "mid-epoch" else 2)
    assert not list(run.glob("*/checkpoints/*.previous.ckpt"))  # cleared once a stage ends
    assert not list(run.glob("*/checkpoints/.*.tmp"))


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    stage = StageDir(tmp_path)
    stage.checkpoints.mkdir()
    last = stage.last_checkpoint
    torch.save({"global_step": 3}, previous_of(last))
    torch.save({"global_step": 4}, last)
    assert resume_point(stage) == (last, None)
    last.write_bytes(last.read_bytes()[:40])  # truncated
    chosen, warning = resume_point(stage)
    assert chosen == previous_of(last)
    assert "damaged" in warning and str(previous_of(last)) in warning
    previous_of(last).write_bytes(b"")
    assert resume_point(stage)[0] is None


def test_a_failed_start_leaves_no_run_directory(data: Path, tmp_path: Path) -> None:
    config = load_config("demo", [*OVERRIDES, "model.pretrained=true",
                                  f"model.weights={tmp_path / 'missing.safetensors'}"])
    with pytest.raises(Exception, match="weights file not found"):
        train(config, data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_resume_accepts_more_epochs_and_refuses_another_experiment(
    data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train(load_config("demo", [*OVERRIDES, "stages.stage1.limit_train_batches=1",
                               "stages.stage2.limit_train_batches=1",
                               "stages.stage1.max_epochs=1"]), data, run, stage="stage1")
    more = load_config("demo", [*OVERRIDES, "stages.stage1.limit_train_batches=1",
                                "stages.stage2.limit_train_batches=1"])
    result = train(more, data, str(run) + "/", stage="stage1", resume=True)  # typed differently
    assert load_config(run / "config.yaml").stages["stage1"].max_epochs == 2
    with (run / "stage1" / "metrics.csv").open() as f:  # the finished stage went on
        assert [r["epoch"] for r in csv.DictReader(f) if r.get("val_miou")] == ["1", "2"]
    assert result.best_metrics["stage1"]["epoch"] in (1, 2)
    with pytest.raises(Exception, match=r"different experiment \(changed: seed\)"):
        train(load_config("demo", [*OVERRIDES, "seed=1"]), data, run, resume=True)


def test_last_checkpoint_is_the_last_epoch_even_without_a_better_one(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation mIoU falls every epoch, so only the first epoch is ever the best; last.ckpt
    must still be the last finished epoch. Off a terminal, progress comes as plain lines."""
    from io import StringIO

    from condseg.training.module import SegmentationModule

    def falling(self, batch, batch_idx):
        self.log("val/miou", 1.0 / (self.current_epoch + 1), on_epoch=True, batch_size=1)
        self.log("val/loss", 1.0, on_epoch=True, batch_size=1)

    monkeypatch.setattr(SegmentationModule, "validation_step", falling)
    log = StringIO()
    config = load_config("demo", [*OVERRIDES, "stages.stage1.max_epochs=3",
                                  "stages.stage1.limit_train_batches=1", "progress_bar=true",
                                  "keep_best_checkpoint=true"])
    train(config, data, tmp_path / "run", stage="stage1", console=Console(file=log, width=200))
    checkpoints = tmp_path / "run" / "stage1" / "checkpoints"
    assert torch.load(checkpoints / "best.ckpt", weights_only=True)["epoch"] == 0
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 2
    text = log.getvalue()
    assert "stage1 epoch 1/3 step 1/1 loss" in text and "stage1 epoch 3/3: train loss" in text
    assert "mIoU 33.33%" in text and "\x1b[" not in text  # plain lines, no live bar


class _Payload:
    """A pickle that creates a file when unpickled (what a planted checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_planted_code_executing_checkpoint_is_never_unpickled(
    data: Path, tmp_path: Path
) -> None:
    run, marker = tmp_path / "run", tmp_path / "pwned"
    config = load_config("demo", [*OVERRIDES, "stages.stage1.max_epochs=1",
                                  "stages.stage1.limit_train_batches=1"])
    train(config, data, run, stage="stage1")
    (run / "stage1" / "result.json").unlink()  # make the stage resumable
    torch.save({"state": _Payload(marker)}, run / "stage1" / "checkpoints" / "last.ckpt")
    console = Console(record=True, width=200)
    train(config, data, run, stage="stage1", resume=True, console=console)
    assert not marker.exists()
    assert "damaged" in console.export_text()  # refused as unreadable, the stage starts over


def test_checkpoint_state_is_re_rooted_into_the_run_folder_it_is_resumed_in(
    tmp_path: Path,
) -> None:
    old, new = (tmp_path / run / "stage1" / "checkpoints" for run in ("old", "new"))
    callback = RunCheckpoint(dirpath=new, filename="best", monitor="val/miou", mode="max")
    callback.load_state_dict({
        "dirpath": str(old), "best_model_path": str(old / "best.ckpt"),
        "best_model_score": torch.tensor(0.7), "kth_best_model_path": str(old / "best.ckpt"),
        "kth_value": torch.tensor(0.7), "best_k_models": {str(old / "best.ckpt"): 0.7},
        "last_model_path": "", "monitor": "val/miou",
    })
    assert callback.best_model_path == str(new / "best.ckpt")
    assert callback.kth_best_model_path == str(new / "best.ckpt")
    assert callback.best_k_models == {str(new / "best.ckpt"): 0.7}
    assert callback.best_model_score == pytest.approx(0.7)  # kept: a worse epoch is no best


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_a_copied_or_moved_run_resumes_from_and_exports_its_own_files(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed in epoch 2 of stage 1; a copy is resumed while the original's best.ckpt is
    replaced, then the copy is moved and resumed again. Validation mIoU falls every epoch, so
    epoch 1 stays the best only if the best score survives the move."""
    import shutil

    from condseg.training.module import SegmentationModule

    def falling(self, batch, batch_idx):
        self.log("val/miou", 1.0 / (self.current_epoch + 1), on_epoch=True, batch_size=1)
        self.log("val/loss", 1.0, on_epoch=True, batch_size=1)

    step = SegmentationModule.training_step

    def killed_in_epoch_2(self, batch, i):
        if self.current_epoch == 1:
            raise RuntimeError("killed")
        return step(self, batch, i)

    monkeypatch.setattr(SegmentationModule, "validation_step", falling)
    monkeypatch.setattr(SegmentationModule, "training_step", killed_in_epoch_2)
    # best.ckpt kept at the stage's end, so that the test can compare the export with it
    overrides = [*OVERRIDES, "stages.stage1.limit_train_batches=1", "keep_best_checkpoint=true"]
    original = tmp_path / "original"
    with pytest.raises(RuntimeError, match="killed"):
        train(load_config("demo", [*overrides, "stages.stage1.max_epochs=2"]), data, original,
              stage="stage1")
    monkeypatch.setattr(SegmentationModule, "training_step", step)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    best = original / "stage1" / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(best, weights_only=True)
    checkpoint["state_dict"] = {k: torch.zeros_like(v) for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, best)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in original.rglob("*"))

    result = train(load_config("demo", [*overrides, "stages.stage1.max_epochs=2"]), data, copy,
                   stage="stage1", resume=True)
    assert result.model_file == copy / "stage1" / "model.safetensors"
    exported = load_model(result.model_file).state_dict()
    own = _weights(copy / "stage1" / "checkpoints" / "best.ckpt")
    assert all(torch.equal(v, own[f"model.{k}"]) for k, v in exported.items())
    assert any(v.abs().sum() > 0 for v in exported.values())  # not the original's zeros
    assert sorted((p.name, p.stat().st_mtime_ns) for p in original.rglob("*")) == before
    summary = json.loads((copy / "stage1" / "result.json").read_text())
    assert (summary["model_file"], summary["best_checkpoint"]) == (
        "stage1/model.safetensors", "stage1/checkpoints/best.ckpt")

    moved = tmp_path / "moved"
    copy.rename(moved)
    result = train(load_config("demo", [*overrides, "stages.stage1.max_epochs=3"]), data, moved,
                   stage="stage1", resume=True)
    assert result.model_file == moved / "stage1" / "model.safetensors"
    assert result.best_metrics["stage1"]["epoch"] == 1  # the best score was carried over
    exported = load_model(result.model_file).state_dict()
    assert all(torch.equal(v, own[f"model.{k}"]) for k, v in exported.items())
    assert not copy.exists()
