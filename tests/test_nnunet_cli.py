"""``condseg nnunet`` and ``data synth --format nnunet`` (issue 25): what works with and
without the ``condseg[nnunet]`` extra. The round trips through nnU-Net are in test_nnunet.py."""

from __future__ import annotations

import ast
import ctypes
import importlib.util
import json
import os
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from condseg.cli import app
from condseg.data.synthetic import synthesize
from condseg.nnunet import VARIABLE, trainers_folder, with_trainers

runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src"
NAMES = ("nnUNetTrainerUAFR", "nnUNetTrainerPDCR", "nnUNetTrainerPDCRUAFR",
         "nnUNetTrainerM2SNet")


def test_synth_volumes_in_nnunet_raw_format_seeded(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "synth", str(tmp_path / "a"), "--task", "volumes",
                                 "--format", "nnunet", "--train", "5", "--val", "2"])
    assert result.exit_code == 0, result.output
    a, b = tmp_path / "a", synthesize(tmp_path / "b", n_train=5, n_val=2, task="volumes",
                                      format="nnunet")
    c = synthesize(tmp_path / "c", n_train=5, n_val=2, task="volumes", format="nnunet", seed=1)
    dataset = json.loads((a / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "gland": 1, "core": 2}
    assert dataset["numTraining"] == 5 and dataset["file_ending"] == ".tif"
    assert dataset["channel_names"] == {"0": "MRI"}
    cases = sorted(p.name for p in (a / "labelsTr").glob("*.tif"))
    assert len(cases) == 5 and len(list((a / "labelsTs").glob("*.tif"))) == 2
    for images, labels in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        for label in (a / labels).glob("*.tif"):
            case = label.stem
            image = tifffile.imread(a / images / f"{case}_0000.tif")
            ids = tifffile.imread(label)
            assert image.shape == ids.shape == (32, 32, 32)
            assert set(np.unique(ids)) == {0, 1, 2}  # both foreground classes in every case
            assert (ids == 2).sum() >= 100 and image.std() > 10
            assert image[ids == 1].mean() > image[ids == 2].mean() > image[ids == 0].mean()
            for folder in (images, labels):
                assert json.loads((a / folder / f"{case}.json").read_text())["spacing"] == [
                    1.0, 1.0, 1.0]
            for kind in (f"{images}/{case}_0000.tif", f"{labels}/{case}.tif"):
                assert (a / kind).read_bytes() == (b / kind).read_bytes()
    assert (a / "labelsTr/synth_0000.tif").read_bytes() != (c / "labelsTr/synth_0000.tif") \
        .read_bytes()


def test_synth_layers_in_nnunet_raw_format(tmp_path: Path) -> None:
    out = synthesize(tmp_path / "l", n_train=5, n_val=1, size=32, task="layers",
                     format="nnunet")
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["file_ending"] == ".png" and len(dataset["labels"]) == 4
    image = np.asarray(Image.open(out / "imagesTr" / "synth_0000_0000.png"))
    ids = np.asarray(Image.open(out / "labelsTr" / "synth_0000.png"))
    assert image.shape == ids.shape == (32, 32) and set(np.unique(ids)) == {0, 1, 2, 3}


@pytest.mark.parametrize(("task", "fmt"), [("volumes", "condseg"), ("lesions", "nnunet"),
                                           ("layers", "nifti")])
def test_synth_refuses_a_format_the_task_has_not(tmp_path: Path, task: str, fmt: str) -> None:
    out = tmp_path / "x"
    result = runner.invoke(app, ["data", "synth", str(out), "--task", task, "--format", fmt])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--format" in lines[0]
    assert not out.exists()


def test_synth_refuses_fewer_cases_than_nnunet_s_folds(tmp_path: Path) -> None:
    out = tmp_path / "x"
    result = runner.invoke(app, ["data", "synth", str(out), "--task", "volumes", "--format",
                                 "nnunet", "--train", "4"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: train (--train) must be at least 5")
    assert "\n" not in result.output.strip() and not out.exists()


def test_a_failed_hand_over_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("nnunetv2") is None:
        pytest.skip("nnunetv2 is not installed (condseg[nnunet])")
    monkeypatch.setattr(metadata, "entry_points", lambda **_: ())  # a broken nnU-Net install
    result = runner.invoke(app, ["nnunet", "train", "2", "3d_fullres", "0"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith("error: nnunetv2 ") and "has no command nnUNetv2_train" in line
    assert "\n" not in line


def test_without_the_extra_each_command_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = metadata.version

    def version(name: str) -> str:
        if name == "nnunetv2":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", version)
    for command in (["trainers"], ["train", "2", "3d_fullres", "0"], ["predict", "-h"],
                    ["plan", "-d", "2"]):
        result = runner.invoke(app, ["nnunet", *command])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == ('error: nnU-Net v2 is not installed; install it with '
                                         'pip install "condseg[nnunet]"')


def test_the_trainer_folder_names_every_variant() -> None:
    folder = trainers_folder()
    assert folder.is_dir() and (folder / "__init__.py").is_file()
    tree = ast.parse((folder / "condseg_variants.py").read_text())
    found = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             for alias in node.names}
    assert found == {*NAMES, *(f"{n}_5epochs" for n in NAMES)}
    assert all(node.module == "condseg.nnunet.variants" for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom))


def test_the_variable_puts_condseg_first_and_keeps_the_rest() -> None:
    mine = str(trainers_folder())
    assert with_trainers({})[VARIABLE] == mine
    kept = with_trainers({VARIABLE: os.pathsep.join(["/a", mine, "/b"]), "X": "1"})
    assert kept[VARIABLE] == os.pathsep.join([mine, "/a", "/b"]) and kept["X"] == "1"


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def test_commands_hand_over_to_nnunet_unchanged() -> None:
    pytest.importorskip("nnunetv2", reason="nnU-Net v2 is not installed (condseg[nnunet])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get(
        "PYTHONPATH", "")])}
    env.pop(VARIABLE, None)
    folder = subprocess.run([sys.executable, "-m", "condseg", "nnunet", "trainers"], env=env,
                            capture_output=True, text=True, timeout=120,
                            preexec_fn=_die_with_parent)
    assert folder.returncode == 0 and folder.stdout == f"{trainers_folder()}\n"
    for command, program in (("train", "nnUNetv2_train"), ("predict", "nnUNetv2_predict"),
                             ("plan", "nnUNetv2_plan_and_preprocess")):
        done = subprocess.run([sys.executable, "-m", "condseg", "nnunet", command, "-h"],
                              env=env, capture_output=True, text=True, timeout=120,
                              preexec_fn=_die_with_parent)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"usage: {program} " in done.stdout, done.stdout[:300]
