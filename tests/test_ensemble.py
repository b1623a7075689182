"""The ensemble model: mean probability of members, one self-contained model file that
load_model, predict, evaluate and the CLI take like any other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from condseg.cli import app
from condseg.data.synthetic import synthesize
from condseg.errors import EnsembleError
from condseg.evaluation.evaluate import evaluate
from condseg.inference.options import InferenceOptions
from condseg.inference.predict import predict
from condseg.models.ensemble import Ensemble, build_ensemble, save_ensemble
from condseg.models.model_file import load_model, read_header, save_model
from condseg.models.registry import create_model

SIZE = 32
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _member(path: Path, seed: int, normalization=IMAGENET, size: int = SIZE) -> Path:
    """A narrow ConDSeg with its own random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    model = create_model("condseg", width=16, encoder="resnet18")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    mean, std = normalization
    return save_model(path, model.eval(), mean=mean, std=std, input_size=size)


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("members")
    # The third member was "trained" without mean/std normalisation (as imported checkpoints).
    return [_member(folder / "a.safetensors", 0), _member(folder / "b.safetensors", 1),
            _member(folder / "c.safetensors", 2, normalization=(None, None))]


@pytest.fixture(scope="module")
def ensemble_file(members: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ensemble") / "ensemble.safetensors"
    return save_ensemble(path, members, metrics={"dice": 0.5})


def test_the_ensemble_predicts_the_mean_of_its_members_probabilities(
    members: list[Path], ensemble_file: Path
) -> None:
    image = np.random.default_rng(0).integers(0, 255, (40, 52, 3), dtype=np.uint8)
    ensemble = load_model(ensemble_file)
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 3
    assert ensemble.map_names == ("fg", "bg", "uc")
    # Each member sees the image normalised as it was trained (the third: no mean/std).
    singles = [predict(load_model(path), image) for path in members]
    pred = predict(ensemble, image)
    expected = np.mean([p.prob for p in singles], axis=0)
    np.testing.assert_allclose(pred.prob, expected, atol=1e-5)
    for key in ("fg", "bg", "uc"):
        np.testing.assert_allclose(pred.maps[key], np.mean([p.maps[key] for p in singles], 0),
                                   atol=1e-5)
    assert np.abs(pred.prob - singles[0].prob).max() > 1e-3
    # Options compose: TTA of the ensemble is the mean over flips of the ensemble.
    tta = predict(ensemble, image, options=InferenceOptions(tta=True))
    flipped = predict(ensemble, np.ascontiguousarray(image[:, ::-1])).prob[:, ::-1]
    assert np.abs(tta.prob - (pred.prob + flipped) / 2).max() < np.abs(tta.prob - pred.prob).max()


def test_the_ensemble_file_is_self_contained(
    members: list[Path], ensemble_file: Path, tmp_path: Path
) -> None:
    header = read_header(ensemble_file)
    assert header["arch"]["name"] == "ensemble"
    assert [m["name"] for m in header["arch"]["options"]["members"]] == ["condseg"] * 3
    assert header["mean"] == list(IMAGENET[0]) and header["input_size"] == [SIZE, SIZE]
    assert header["metrics"] == {"dice": 0.5}
    moved = tmp_path / "elsewhere.safetensors"
    moved.write_bytes(ensemble_file.read_bytes())
    built = build_ensemble(members)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.inference_mode():
        torch.testing.assert_close(load_model(moved)(x).mask, built(x).mask)
    with pytest.raises(FileExistsError):
        save_ensemble(ensemble_file, members)


def test_members_must_share_the_input_size(members: list[Path], tmp_path: Path) -> None:
    other = _member(tmp_path / "big.safetensors", 3, size=64)
    with pytest.raises(EnsembleError, match="share one input size"):
        build_ensemble([members[0], other])
    with pytest.raises(EnsembleError, match="at least one"):
        build_ensemble([])


def test_evaluate_and_predict_take_the_ensemble_file(ensemble_file: Path, tmp_path: Path) -> None:
    data = synthesize(tmp_path / "data", n_train=1, n_val=2, size=48)
    result = evaluate(load_model(ensemble_file), data, split="val")
    assert result.protocol["model"] == "ensemble" and len(result.rows) == 2
    runner = CliRunner()
    out = runner.invoke(app, ["evaluate", str(ensemble_file), "--data", str(data), "--tta"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["predict", str(ensemble_file), str(data / "images"), "--out",
                              str(tmp_path / "pred"), "--maps"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "pred" / "synth_0000_uc.png").is_file()
