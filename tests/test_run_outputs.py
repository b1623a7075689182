"""What a run leaves for the researcher: a folder of its own, files with the user's umask, no
optimiser-state copy of the best weights, RUN/train.log in whole lines, progress with an ETA,
no Lightning warnings a user cannot act on, metrics.csv with one row per epoch, TensorBoard's
hyper-parameters and validation prediction grids.

One tiny `condseg train` (ConDSeg stage 1, 64 px, 2 epochs of 2 steps) is shared by the
assertions marked slow; one resume of it extends the stage by an epoch.
"""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path

import pytest
import torch
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from condseg.cli import app
from condseg.data.prepare import prepare_folder
from condseg.data.synthetic import synthesize
from condseg.epoch_log import write_epoch_log
from condseg.models.model_file import read_header, save_model
from condseg.models.registry import create_model
from condseg.training.logs import RunLog
from condseg.training.run import TrainResult

TINY = ["data.size=64", "data.batch_size=4", "data.num_workers=0", "model.options.width=16",
        "model.options.encoder=resnet18", "train_stages=[stage1]", "stages.stage1.max_epochs=2",
        "stages.stage1.limit_train_batches=2", "log_every_n_steps=1",
        "log_images_every_n_epochs=1"]
runner = CliRunner()


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`condseg train` with the default --out, under umask 022, its warnings recorded."""
    home = tmp_path_factory.mktemp("home")
    data = synthesize(home / "synth", n_train=8, n_val=4, size=64)
    with working_directory(home), umask(0o022), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, ["train", "--data", str(data), "--config", "demo", *TINY])
    assert result.exit_code == 0, result.output
    (run_dir,) = (home / "runs").iterdir()
    return {"home": home, "run": run_dir, "output": result.output, "warnings": caught}


@pytest.mark.slow  # the shared tiny run
def test_default_out_is_unique_per_run_and_printed(run: dict) -> None:
    assert re.fullmatch(r"demo-\d{8}-\d{6}", run["run"].name)
    assert f"run directory (default --out): runs/{run['run'].name}\n" in run["output"]


def test_a_second_method_gets_its_own_default_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_train(config, data, run_dir, **kwargs) -> TrainResult:
        Path(run_dir).mkdir(parents=True)
        return TrainResult(Path(run_dir), {"train": Path(run_dir) / "model.safetensors"})

    monkeypatch.setattr("condseg.training.train", fake_train)
    monkeypatch.chdir(tmp_path)
    for method in ("unet", "unet", "deeplabv3plus"):
        result = runner.invoke(app, ["train", "--data", str(tmp_path), "--method", method])
        assert result.exit_code == 0, result.output
        assert "--resume" not in result.output
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(names) == 3, names  # the same method twice (within a second, even): two folders
    assert [re.fullmatch(r"(.+)-\d{8}-\d{6}(-2)?", n).group(1) for n in names] == [
        "deeplabv3plus", "unet", "unet"], names


@pytest.mark.slow  # the shared tiny run
def test_run_files_follow_the_umask(run: dict) -> None:
    stage = run["run"] / "stage1"
    for path in (stage / "model.safetensors", stage / "metrics.csv", run["run"] / "train.log",
                 stage / "checkpoints" / "last.ckpt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    for path in (run["run"], stage, stage / "checkpoints"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"),
                         [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)],
                         ids=["umask022", "umask077"])
def test_model_files_and_prepared_datasets_follow_the_umask(
    tmp_path: Path, mask: int, file_mode: int, dir_mode: int
) -> None:
    data = synthesize(tmp_path / "synth", n_train=8, n_val=2, size=32)
    model = create_model("unet", pretrained=False, encoder="resnet18")
    with umask(mask):
        path = save_model(tmp_path / "model.safetensors", model, mean=None, std=None,
                          input_size=32)
        prepared = prepare_folder(data / "images", data / "masks", tmp_path / "prepared")
    assert stat.S_IMODE(path.stat().st_mode) == file_mode
    assert stat.S_IMODE(prepared.stat().st_mode) == dir_mode
    assert stat.S_IMODE((prepared / "train.txt").stat().st_mode) == file_mode
    assert not list(tmp_path.glob(".*"))  # no temporary file or folder left


@pytest.mark.slow  # the shared tiny run
def test_a_finished_stage_keeps_model_file_and_last_checkpoint_only(run: dict) -> None:
    checkpoints = run["run"] / "stage1" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]
    summary = json.loads((run["run"] / "stage1" / "result.json").read_text())
    assert summary["best_checkpoint"] is None
    assert (run["run"] / "stage1" / "model.safetensors").is_file()


@pytest.mark.slow  # the shared tiny run
def test_train_log_holds_the_console_output_in_whole_lines(run: dict) -> None:
    log = (run["run"] / "train.log").read_text()
    model_file = f"runs/{run['run'].name}/stage1/model.safetensors"
    lines = log.splitlines()
    assert any(line.endswith(f"-> {model_file}") for line in lines), log  # not wrapped
    assert "stage1 epoch 2/2: train loss" in log and "\x1b[" not in log
    printed = run["output"].splitlines()
    start = printed.index(lines[0])
    assert printed[start:start + len(lines)] == lines  # as printed, from the run folder on
    assert printed[start + len(lines):] == [printed[-1]]  # but the CLI's own last line


@pytest.mark.slow  # the shared tiny run
def test_progress_lines_show_an_eta(run: dict) -> None:
    output = run["output"]
    assert re.search(r"stage1 epoch 1/2 step 1/2 loss \d+\.\d{4} \(ETA \d+:\d\d:\d\d\)", output)
    assert re.search(r"stage1 epoch 1/2: .*mIoU \d+\.\d\d%.*\(\d+ s, ETA \d+:\d\d:\d\d\)",
                     output)


def _from_lightning(caught: list[warnings.WarningMessage]) -> list[str]:
    return [f"{w.filename}: {w.message}" for w in caught
            if "lightning" in w.filename or "LeafSpec" in str(w.message)]


@pytest.mark.slow  # the shared tiny run
def test_lightning_warnings_a_user_cannot_act_on_are_not_shown(run: dict) -> None:
    assert _from_lightning(run["warnings"]) == []


@pytest.mark.slow  # the shared tiny run
def test_metrics_csv_has_one_row_per_epoch_in_the_tables_units(run: dict) -> None:
    stage = run["run"] / "stage1"
    with (stage / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0])[:8] == ["epoch", "train_loss", "train_mask_loss", "val_mask_loss",
                                 "val_miou", "val_mdsc", "val_recall", "val_precision"]
    assert all(r[k] for r in rows for k in rows[0])  # every cell filled
    assert not any("step" in k or "/" in k for k in rows[0])
    best = read_header(stage / "model.safetensors")["metrics"]
    row = rows[best["epoch"] - 1]
    assert float(row["val_miou"]) == pytest.approx(100 * best["miou"], rel=1e-4)
    assert float(row["val_mask_loss"]) == pytest.approx(best["loss"], rel=1e-4)
    assert (stage / "curves.png").is_file()


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"images": 0})
    events.Reload()
    return events


@pytest.mark.slow  # the shared tiny run
def test_tensorboard_gets_hyperparameters_and_prediction_grids(run: dict) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = _events(run["run"] / "stage1" / "tensorboard")
    grids = events.Images("val/predictions")
    assert [g.step for g in grids] == [1, 2]
    assert (grids[0].width, grids[0].height) == (3 * 64 + 4 * 2, 4 * 64 + 5 * 2)  # 4 rows
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["stages.stage1.max_epochs"].number_value == 2
    assert hparams["model.options.encoder"].string_value == "resnet18"
    assert events.Scalars("hp/best_val_miou")[-1].value >= 0


@pytest.mark.slow  # the shared tiny run
def test_a_finished_stage_extends_without_its_best_checkpoint(run: dict) -> None:
    """Resuming with more epochs continues from last.ckpt; the model file stays the best
    (best.ckpt is written again only by a better epoch); the log is appended to."""
    run_dir, before = run["run"], (run["run"] / "train.log").read_text()
    best_before = read_header(run_dir / "stage1" / "model.safetensors")["metrics"]
    with working_directory(run["home"]), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, ["train", "--resume", str(run_dir.relative_to(run["home"])),
                                     "stages.stage1.max_epochs=3", "log_images_every_n_epochs=0"])
    assert result.exit_code == 0, result.output
    assert _from_lightning(caught) == []
    log = (run_dir / "train.log").read_text()
    assert log.startswith(before) and "stage1 epoch 3/3: train loss" in log[len(before):]
    assert torch.load(run_dir / "stage1/checkpoints/last.ckpt", weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in (run_dir / "stage1/checkpoints").iterdir()) == ["last.ckpt"]
    best = read_header(run_dir / "stage1" / "model.safetensors")["metrics"]
    assert best["epoch"] == 3 or best == best_before
    with (run_dir / "stage1" / "metrics.csv").open() as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]
    grids = _events(run_dir / "stage1" / "tensorboard").Images("val/predictions")
    assert [g.step for g in grids] == [1, 2]  # log_images_every_n_epochs=0: none for epoch 3


def test_run_log_copies_text_as_whole_lines_and_skips_live_displays(tmp_path: Path) -> None:
    console = Console(file=StringIO(), width=40)
    path = "/a/long/folder/name/that/is/wider/than/the/terminal/model.safetensors"
    with RunLog(console) as log:
        console.print("before the run folder exists")
        log.attach(tmp_path / "train.log")
        console.print(f"wrote {path}")
        table = Table("metric", "mean")
        table.add_row("Dice (%)", "91.20")
        console.print(table)
    console.print("after the run")
    text = (tmp_path / "train.log").read_text()
    assert text.splitlines()[0] == f"wrote {path}"
    assert "Dice (%)" in text and "before" not in text and "after" not in text
    assert path not in console.file.getvalue()  # the terminal wraps at its width


def test_run_log_records_the_error_that_ends_a_run(tmp_path: Path) -> None:
    console = Console(file=StringIO())
    with pytest.raises(RuntimeError), RunLog(console) as log:
        log.attach(tmp_path / "train.log")
        raise RuntimeError("disk full")
    assert (tmp_path / "train.log").read_text().splitlines()[-1] == (
        "stopped: RuntimeError: disk full")


def test_epoch_log_merges_attempts_one_row_per_epoch(tmp_path: Path) -> None:
    """A killed attempt's partial epoch 2 is replaced by the resumed attempt's; learning rates
    logged as an epoch starts belong to it."""
    header = "epoch,lr-Adam/encoder,step,train/loss_step,train/loss_epoch,val/loss,val/miou\n"
    first = tmp_path / "csv" / "version_0"
    second = tmp_path / "csv" / "version_1"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    (first / "metrics.csv").write_text(
        header + ",0.1,0,,,,\n0,,0,0.9,,,\n0,,1,,,0.8,0.25\n0,,1,,0.85,,\n"
        ",0.05,2,,,,\n1,,2,0.7,,,\n")  # killed in epoch 2
    (second / "metrics.csv").write_text(
        header + ",0.04,2,,,,\n1,,2,0.6,,,\n1,,3,,,0.5,0.5\n1,,3,,0.65,,\n")
    table = write_epoch_log(tmp_path)
    with table.open() as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {"epoch": "1", "train_loss": "0.85", "val_mask_loss": "0.8", "val_miou": "25.0",
         "lr_encoder": "0.1"},
        {"epoch": "2", "train_loss": "0.65", "val_mask_loss": "0.5", "val_miou": "50.0",
         "lr_encoder": "0.04"},
    ]
