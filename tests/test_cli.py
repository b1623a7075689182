"""The command line: bad input is reported clearly and nothing good is lost."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from condseg import cli
from condseg.cli import app
from condseg.data.synthetic import synthesize
from condseg.models.model_file import save_model
from condseg.models.registry import create_model

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """One table row per line, as in a wide terminal, so that rows can be asserted on."""
    monkeypatch.setattr(cli.console, "width", 250)


@pytest.fixture
def broken_dataset(tmp_path: Path) -> Path:
    """A synthetic dataset with a missing mask, an unreadable image and a size mismatch."""
    root = synthesize(tmp_path / "ds", n_train=6, n_val=3, size=64, seed=1)
    (root / "masks" / "synth_0000.png").unlink()
    (root / "images" / "synth_0001.png").write_bytes(b"not an image")
    mask = cv2.imread(str(root / "masks" / "synth_0004.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(root / "masks" / "synth_0004.png"), cv2.resize(mask, (32, 32)))
    return root


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    net = create_model("condseg", encoder="resnet18", width=16)
    return save_model(tmp_path / "tiny.safetensors", net, mean=(0.5,) * 3, std=(0.25,) * 3,
                      input_size=64)


def _rows(output: str) -> list[str]:
    return [line for line in output.splitlines() if re.match(r"^│ error", line)]


def test_check_names_each_bad_file_once(broken_dataset: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(broken_dataset)])
    assert result.exit_code == 1
    rows = _rows(result.output)
    assert len(rows) == 3, result.output
    expected = {
        "synth_0000": "no mask file",
        "images/synth_0001.png": "cannot read image",
        "masks/synth_0004.png": "image is 64x64 but mask is 32x32",
    }
    for file, message in expected.items():
        assert sum(file in row and message in row for row in rows) == 1, (file, result.output)


def test_training_refuses_a_broken_dataset(broken_dataset: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["train", "--config", "demo", "--data", str(broken_dataset), "--out",
         str(tmp_path / "run")],
    )
    assert result.exit_code == 2, result.output
    assert "error" in result.output.lower()
    for file in ("synth_0000", "synth_0001.png", "synth_0004.png"):
        assert file in result.output
    assert not (tmp_path / "run").exists()  # a refused run leaves nothing to clean up


def test_predict_reports_an_unreadable_file_and_writes_the_others(
    model_file: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "good.png"), rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    (images / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(model_file), str(images), "--out", str(out),
                                 "--overlay"])
    assert result.exit_code == 1, result.output
    assert "bad.jpg" in result.output
    mask = cv2.imread(str(out / "good.png"), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (50, 70)
    assert (out / "good_overlay.png").is_file()
    assert not any(p.name.startswith("bad") for p in out.iterdir())


def test_unknown_model_and_missing_files_are_one_line_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(tmp_path / "none.safetensors"), "--data",
                                 str(tmp_path)])
    assert result.exit_code == 2
    assert "none.safetensors" in result.output
    result = runner.invoke(app, ["convert-official", str(tmp_path / "x.pth"),
                                 str(tmp_path / "y.safetensors")])
    assert result.exit_code == 2
    assert "x.pth" in result.output


def test_models_and_synth(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "condseg-pvt" in result.output
    out = tmp_path / "synth"
    assert runner.invoke(app, ["data", "synth", str(out), "--train", "2", "--val", "1",
                               "--size", "32"]).exit_code == 0
    assert len(list((out / "images").iterdir())) == 3
    again = runner.invoke(app, ["data", "synth", str(out)])
    assert again.exit_code == 2
    assert "--overwrite" in again.output


def test_version_and_short_help_on_every_command() -> None:
    from condseg import __version__

    for flag in ("--version", "-V"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0 and result.output == f"condseg {__version__}\n"
    group = typer.main.get_command(app)
    commands = [[name] for name in group.commands]
    commands += [["data", name] for name in group.commands["data"].commands]
    assert len(commands) > 12
    for command in [[], *commands]:
        short, long = (runner.invoke(app, [*command, flag]) for flag in ("-h", "--help"))
        assert short.exit_code == 0 == long.exit_code, (command, short.output)
        assert short.output == long.output and "Usage:" in short.output, command


def test_one_vocabulary_at_the_command_line() -> None:
    """A .safetensors model file is MODEL_FILE, not a checkpoint; each --precision says which
    precision it is; --batch-size is the batch everywhere (benchmark keeps --batch); a renamed
    option keeps its former spelling, hidden."""
    commands = typer.main.get_command(app).commands
    for name in ("evaluate", "predict", "export"):
        assert commands[name].params[0].name == "model_file", name
    for name in ("train", "cv"):
        precision = next(p for p in commands[name].params if p.name == "precision")
        assert precision.help.startswith("Training precision"), name
    for name in ("evaluate", "predict"):
        precision = next(p for p in commands[name].params if p.name == "precision")
        assert precision.help.startswith("Inference precision"), name
    batch = next(p for p in commands["benchmark"].params if p.name == "batch_size")
    assert batch.opts == ["--batch-size", "--batch"]
    former = next(p for p in commands["predict"].params if p.name == "save_probabilities")
    assert former.hidden and "--save-probabilities" not in runner.invoke(
        app, ["predict", "--help"]).output


def test_train_epochs_sets_max_epochs_of_every_stage_it_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []

    def spy(cfg, data, run_dir, stage, resume):
        seen.append((stage, {name: s.max_epochs for name, s in cfg.stages.items()}))
        return SimpleNamespace(run_dir=run_dir, model_file=run_dir / "model.safetensors")

    monkeypatch.setattr("condseg.training.train", spy)
    base = ["train", "--config", "demo", "--data", str(tmp_path), "--out", str(tmp_path / "r")]
    for extra, expected in (
        (["--epochs", "3"], ("all", {"stage1": 3, "stage2": 3})),
        (["--epochs", "3", "--stage", "2"], ("2", {"stage1": 2, "stage2": 3})),
        (["--epochs", "3", "--stage", "stage1"], ("stage1", {"stage1": 3, "stage2": 10})),
        (["--epochs", "3", "stages.stage1.max_epochs=5"], ("all", {"stage1": 5, "stage2": 3})),
    ):
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 0, result.output
        assert seen.pop() == expected, extra
    result = runner.invoke(app, [*base, "--epochs", "0"])
    assert result.exit_code == 2 and "--epochs" in result.output and not seen
