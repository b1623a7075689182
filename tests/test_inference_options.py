"""Inference options: test-time augmentation, sliding windows, thresholds and saved probability
maps, through predict, evaluate, the Python API and the CLI (small generated data)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from condseg.cli import app
from condseg.errors import CondsegError, ModelError
from condseg.evaluation.evaluate import evaluate
from condseg.inference.engine import prepare
from condseg.inference.options import InferenceOptions
from condseg.inference.predict import predict, predict_arrays, predict_files
from condseg.inference.sliding import SlidingWindow
from condseg.inference.tta import DIHEDRAL, FLIPS, TTA
from condseg.models.base import ModelOutput, SegmentationModel, eval_mode
from condseg.models.ensemble import mean_probability_logits
from condseg.models.model_file import load_model, save_model
from condseg.models.registry import register_model

SIZE = 32
META = {"mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [SIZE, SIZE]}


class Skewed(SegmentationModel):
    """A model that is not flip-invariant: its logits depend on the position in the window and
    on an asymmetric convolution; it records the input shapes it was called with."""

    input_divisor = 8
    encoder_path = None
    map_names = ("edge",)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        torch.manual_seed(0)
        nn.init.normal_(self.conv.weight, std=2.0)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> ModelOutput:
        self.calls.append(tuple(x.shape))
        ramp = torch.linspace(-3, 3, x.shape[-1], device=x.device)
        mask = self.conv(x) + ramp
        return ModelOutput(mask, {"edge": -mask, "features": x})


@register_model("test-pointwise", description="logits from pixel brightness only (tests)")
class Pointwise(SegmentationModel):
    """Logits of each pixel from that pixel alone: any window or flip gives the same answer."""

    input_divisor = 8
    encoder_path = None

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(self.scale * x.mean(1, keepdim=True))


def _with_meta(model: SegmentationModel) -> SegmentationModel:
    model.meta = dict(META)
    return model.eval()


def _manual_average(model: SegmentationModel, x: torch.Tensor, views) -> dict[str, torch.Tensor]:
    """The definition: the mean over views of each view's probabilities mapped back."""
    sums: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for turns, axes in views:
            out = model(torch.flip(torch.rot90(x, turns, (-2, -1)), axes) if axes
                        else torch.rot90(x, turns, (-2, -1)))
            for key, z in (("mask", out.mask), ("edge", out.aux["edge"])):
                back = torch.rot90(torch.flip(z, axes) if axes else z, -turns, (-2, -1))
                sums[key] = sums.get(key, 0) + torch.sigmoid(back)
    return {key: value / len(views) for key, value in sums.items()}


@pytest.mark.parametrize("rotations", [False, True])
def test_tta_averages_probabilities_of_the_mapped_back_views(rotations: bool) -> None:
    model = Skewed().eval()
    x = torch.randn(2, 3, 16, 24)  # not square: a 90° turn swaps height and width
    tta = TTA(model, rotations=rotations)
    with torch.no_grad():
        out = tta(x)
    views = DIHEDRAL if rotations else FLIPS
    expected = _manual_average(model, x, views)
    assert len(views) == (8 if rotations else 4)
    assert set(out.aux) == {"edge"}  # training-only outputs are not averaged
    torch.testing.assert_close(torch.sigmoid(out.mask), expected["mask"], atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.sigmoid(out.aux["edge"]), expected["edge"], atol=1e-6,
                               rtol=0)
    plain = torch.sigmoid(model(x).mask)
    assert (torch.sigmoid(out.mask) - plain).abs().max() > 0.05  # it does change the output


def test_mean_probability_logits_is_exact_and_finite_at_extremes() -> None:
    logits = [torch.tensor([0.0, 3.0, -200.0, 80.0, -1e4]), torch.tensor([2.0, -3.0, -200.0,
                                                                          -80.0, 1e4])]
    merged = mean_probability_logits(logits)
    assert torch.isfinite(merged).all()
    expected = (torch.sigmoid(logits[0].double()) + torch.sigmoid(logits[1].double())) / 2
    torch.testing.assert_close(torch.sigmoid(merged.double()), expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(mean_probability_logits([logits[0][:4]]), logits[0][:4])


def test_tta_through_predict_and_a_flip_invariant_model() -> None:
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    pointwise = _with_meta(Pointwise())
    plain = predict(pointwise, image)
    augmented = predict(pointwise, image, options=InferenceOptions(tta=True, rotations=True))
    np.testing.assert_allclose(augmented.prob, plain.prob, atol=1e-6)
    skewed = _with_meta(Skewed())
    changed = predict(skewed, image, options=InferenceOptions(tta=True))
    assert np.abs(changed.prob - predict(skewed, image).prob).max() > 0.05
    assert changed.prob.shape == (40, 56) and set(changed.maps) == {"edge"}


def test_threshold_decides_the_mask() -> None:
    image = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    model = _with_meta(Skewed())
    for threshold in (0.2, 0.5, 0.8):
        pred = predict(model, image, threshold=threshold)
        assert np.array_equal(pred.mask, pred.prob >= threshold)
    assert predict(model, image, threshold=0.2).mask.sum() > predict(model, image, 0.8).mask.sum()


def test_sliding_window_runs_windows_of_the_input_size_on_large_images_only() -> None:
    rng = np.random.default_rng(2)
    large, small = (rng.integers(0, 255, shape, dtype=np.uint8) for shape in
                    ((70, 100, 3), (40, 40, 3)))
    model = prepare(_with_meta(Skewed()))  # the engine's copy is what runs and records calls
    options = InferenceOptions(sliding_window=48, overlap=0.5)
    model.model.calls.clear()
    slid, resized = predict_arrays(model, [large, small], options=options)
    assert slid.prob.shape == (70, 100) and resized.prob.shape == (40, 40)
    assert all(shape[-2:] == (SIZE, SIZE) for shape in model.model.calls)
    assert len(model.model.calls) > 2  # several windows for the large image, one for the small
    np.testing.assert_allclose(resized.prob, predict(model, small).prob, atol=1e-6)
    # At its own resolution, a pointwise model gives the pixel's own probability exactly.
    pointwise = _with_meta(Pointwise())
    x = torch.from_numpy(((large / 255.0 - 0.5) / 0.25).astype(np.float32)).permute(2, 0, 1)
    expected = torch.sigmoid(4.0 * x.mean(0)).numpy()
    got = predict(pointwise, large, options=options).prob
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(predict(pointwise, large).prob, expected, atol=1e-3)  # resized


def test_sliding_window_blends_probabilities_into_contract_logits() -> None:
    model = Skewed().eval()
    net = SlidingWindow(model, (SIZE, SIZE), overlap=0.25)
    x = torch.randn(1, 3, 50, 70)
    with eval_mode(net):
        out = net(x)
    assert out.mask.shape == (1, 1, 50, 70) and set(out.aux) == {"edge"}
    # mask and edge are opposite logits, so their blended probabilities sum to 1.
    total = torch.sigmoid(out.mask) + torch.sigmoid(out.aux["edge"])
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)
    with eval_mode(net):
        direct = net(torch.randn(2, 3, SIZE, SIZE))  # one window: passed straight through
    assert direct.mask.shape == (2, 1, SIZE, SIZE)


def test_options_are_checked() -> None:
    with pytest.raises(CondsegError, match="set tta too"):
        InferenceOptions(rotations=True)
    with pytest.raises(CondsegError, match="overlap"):
        InferenceOptions(sliding_window=64, overlap=1.0)
    with pytest.raises(CondsegError, match="positive"):
        InferenceOptions(sliding_window=0)
    with pytest.raises(ModelError, match="load the model"):
        InferenceOptions(sliding_window=64).wrap(Skewed())
    assert InferenceOptions().wrap(model := Skewed()) is model


def test_predict_files_saves_probabilities_as_png_or_npy(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for name, shape in (("a", (30, 44, 3)), ("b", (32, 32, 3))):
        cv2.imwrite(str(images / f"{name}.png"), rng.integers(0, 255, shape, dtype=np.uint8))
    model = _with_meta(Skewed())
    options = InferenceOptions(tta=True)
    report = predict_files(model, [images], tmp_path / "npy", probability_format="npy",
                           options=options, threshold=0.3)
    assert sorted(p.name for p in report.written) == ["a.png", "a_prob.npy", "b.png",
                                                      "b_prob.npy"]
    prob = np.load(tmp_path / "npy" / "a_prob.npy")
    expected = predict(model, images / "a.png", options=options)
    assert prob.dtype == np.float32 and prob.shape == (30, 44)
    np.testing.assert_allclose(prob, expected.prob, atol=1e-6)
    mask = cv2.imread(str(tmp_path / "npy" / "a.png"), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(mask > 0, prob >= 0.3)

    predict_files(model, [images], tmp_path / "png", probability_format="png", options=options)
    grey = cv2.imread(str(tmp_path / "png" / "a_prob.png"), cv2.IMREAD_UNCHANGED)
    assert grey.dtype == np.uint8 and np.array_equal(grey, np.rint(prob * 255).astype(np.uint8))
    with pytest.raises(FileExistsError, match=r"a_prob\.png"):
        predict_files(model, [images], tmp_path / "png", probability_format="png")
    with pytest.raises(CondsegError, match="png or npy"):
        predict_files(model, [images], tmp_path / "x", probability_format="tiff")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bright boxes on dark noise, 96x128 and 64x64 images (canonical layout, val split)."""
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(4)
    for name, (h, w) in {"big": (96, 128), "small": (64, 64)}.items():
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : h // 2, w // 3 : w // 2 + 9] = 255
        image = np.where(mask[..., None] > 0, 230, rng.integers(0, 60, (h, w, 3)))
        cv2.imwrite(str(root / "images" / f"{name}.png"), image.astype(np.uint8))
        cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)
    (root / "val.txt").write_text("big\nsmall\n")
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "pointwise.safetensors"
    model = Pointwise()
    model.arch = {"name": "test-pointwise", "options": {}}
    with torch.no_grad():
        model.scale.fill_(30.0)  # bright (box) pixels positive, dark ones negative
    return save_model(path, model, mean=[0.5] * 3, std=[0.25] * 3, input_size=SIZE)


def test_evaluate_with_tta_sliding_windows_and_saved_probabilities(
    dataset: Path, model_file: Path, tmp_path: Path
) -> None:
    model = load_model(model_file)
    plain = evaluate(model, dataset, resolution="original")
    options = InferenceOptions(tta=True, sliding_window=64)
    result = evaluate(model, dataset, resolution="original", options=options, threshold=0.4,
                      save_probabilities=tmp_path / "probs", probability_format="npy",
                      out_dir=tmp_path / "eval")
    assert result.protocol["inference"] == {"tta": True, "rotations": False,
                                            "sliding_window": 64, "overlap": 0.25}
    assert result.protocol["threshold"] == 0.4
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["protocol"]["inference"]["sliding_window"] == 64
    # The big image is predicted at its own resolution: its box edges are no longer blurred by
    # the resize to 32x32 and back, so the pointwise model is exact on it.
    rows = {row["name"]: row for row in result.rows}
    assert rows["big"]["dice"] == 1.0
    assert rows["big"]["dice"] > {r["name"]: r for r in plain.rows}["big"]["dice"]
    prob = np.load(tmp_path / "probs" / "big_prob.npy")
    assert prob.shape == (96, 128)
    with pytest.raises(CondsegError, match="resolution='original'"):
        evaluate(model, dataset, options=InferenceOptions(sliding_window=64))
    net = evaluate(model, dataset, options=InferenceOptions(tta=True),
                   save_probabilities=tmp_path / "net", save_masks=tmp_path / "net")
    assert net.protocol["inference"]["tta"] is True
    assert sorted(p.name for p in (tmp_path / "net").iterdir()) == [
        "big.png", "big_prob.png", "small.png", "small_prob.png"]


def test_cli_predict_and_evaluate_take_the_inference_options(
    dataset: Path, model_file: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    out = tmp_path / "pred"
    result = runner.invoke(app, [
        "predict", str(model_file), str(dataset / "images"), "--out", str(out), "--tta-rotations",
        "--probability-format", "npy", "--threshold", "0.6", "--sliding-window", "64",
        "--overlap", "0.5"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["big.png", "big_prob.npy", "small.png",
                                                     "small_prob.npy"]
    assert np.load(out / "big_prob.npy").shape == (96, 128)
    former = runner.invoke(app, [  # --probability-format's former name still works
        "predict", str(model_file), str(dataset / "images"), "--out", str(tmp_path / "former"),
        "--save-probabilities", "png"])
    assert former.exit_code == 0, former.output
    assert (tmp_path / "former" / "big_prob.png").is_file()
    result = runner.invoke(app, [
        "evaluate", str(model_file), "--data", str(dataset), "--tta", "--resolution", "original",
        "--sliding-window", "64", "--threshold", "0.4", "--out", str(tmp_path / "eval"),
        "--save-probabilities", str(tmp_path / "probs")])
    assert result.exit_code == 0, result.output
    protocol = json.loads((tmp_path / "eval" / "summary.json").read_text())["protocol"]
    assert protocol["inference"]["tta"] and protocol["threshold"] == 0.4
    assert (tmp_path / "probs" / "big_prob.png").is_file()
    result = runner.invoke(app, ["evaluate", str(model_file), "--data", str(dataset),
                                 "--sliding-window", "64"])
    assert result.exit_code == 2 and "--resolution original" in result.output
