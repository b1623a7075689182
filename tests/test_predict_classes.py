"""Inference of K-class models (issue 24, point 5): softmax probabilities, class-id PNGs at the
original size, colour PNGs with a legend, overlays by class, K-channel probability files, test-
time augmentation, sliding windows and ensembles averaging probabilities, ONNX export with the
classes in its metadata — on tiny models built here (small generated images)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import nn
from typer.testing import CliRunner

from condseg.cli import app
from condseg.errors import CondsegError, NonFiniteOutputError
from condseg.inference.engine import Execution
from condseg.inference.export import export_onnx, how_to_run
from condseg.inference.options import InferenceOptions
from condseg.inference.predict import predict, predict_files
from condseg.inference.sliding import SlidingWindow
from condseg.inference.tta import DIHEDRAL, FLIPS, TTA
from condseg.models.base import (
    ModelOutput,
    SegmentationModel,
    class_names,
    eval_mode,
    labels_of,
    probabilities,
)
from condseg.models.ensemble import Ensemble
from condseg.models.model_file import save_model
from condseg.models.registry import create_model, register_model
from condseg.viz import CLASS_COLOURS, class_colours, colour_labels

K = 3
SIZE = 32
CLASSES = ("background", "rnfl", "gcipl")
META = {"mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [SIZE, SIZE], "classes": CLASSES}
SHAPES = {"wide": (40, 56), "odd": (27, 70)}  # neither the network size nor its multiple
F32 = Execution(precision="float32")  # the definitions below compute in float32


@register_model("test-classes", description="K logit maps of a convolution and a ramp (tests)")
class Classes(SegmentationModel):
    """K logit maps: a random convolution plus, unless ``pointwise``, a class-dependent ramp
    across the width (not flip-invariant, position-dependent); an auxiliary ``edge`` map."""

    input_divisor = 8
    encoder_path = None
    map_names = ("edge",)

    def __init__(self, num_classes: int = 1, seed: int = 0, pointwise: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pointwise = pointwise
        self.conv = nn.Conv2d(3, num_classes, 1 if pointwise else 3, padding=0 if pointwise
                              else 1)
        with torch.no_grad():
            weight = torch.randn(self.conv.weight.shape, generator=torch.Generator()
                                 .manual_seed(seed))
            self.conv.weight.copy_(2 * weight)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        mask = self.conv(x)
        if not self.pointwise:
            ramp = torch.linspace(-3, 3, x.shape[-1], device=x.device)
            mask = mask + ramp * torch.arange(self.num_classes, device=x.device).view(1, -1, 1, 1)
        return ModelOutput(mask, {"edge": mask[:, -1:] - 2 * mask[:, :1], "features": x})


def _model(num_classes: int = K, **options) -> SegmentationModel:
    model = create_model("test-classes", num_classes=num_classes, **options)
    model.meta = dict(META)
    return model.eval()


def _images(folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = {name: rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
              for name, shape in SHAPES.items()}
    for name, image in images.items():
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return images


def _input(image: np.ndarray, size: tuple[int, int] | None = (SIZE, SIZE)) -> torch.Tensor:
    """The network input by hand: area-shrunk / bilinear-enlarged, normalised as META."""
    if size is not None:
        shrink = image.shape[0] >= size[0] and image.shape[1] >= size[1]
        image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA if shrink
                           else cv2.INTER_LINEAR)
    x = (image.astype(np.float32) / 255 - 0.5) / 0.25
    return torch.from_numpy(x).permute(2, 0, 1)[None]


def _direct(model: SegmentationModel, image: np.ndarray) -> np.ndarray:
    """The definition: the softmax at the network size, resized (bilinear) to the image."""
    with torch.no_grad():
        prob = torch.softmax(model(_input(image)).mask, 1)
    return F.interpolate(prob, size=image.shape[:2], mode="bilinear",
                         align_corners=False)[0].numpy()


def test_probabilities_are_the_softmax_and_a_nan_is_refused() -> None:
    model = _model()
    x = torch.randn(2, 3, SIZE, SIZE)
    with eval_mode(model):
        probs = probabilities(model, x)
    assert probs["mask"].shape == (2, K, SIZE, SIZE) and probs["edge"].shape == (2, SIZE, SIZE)
    torch.testing.assert_close(probs["mask"], torch.softmax(model(x).mask, 1))
    torch.testing.assert_close(probs["mask"].sum(1), torch.ones(2, SIZE, SIZE))
    x[1, :, 3, 3] = float("nan")
    with eval_mode(model), pytest.raises(NonFiniteOutputError, match=r"\(mask\) for b\.png"):
        probabilities(model, x, ["a.png", "b.png"])


def test_labels_are_the_threshold_or_the_argmax() -> None:
    binary = np.array([[0.2, 0.5], [0.7, 0.49]], np.float32)
    assert labels_of(binary, 0.5).tolist() == [[False, True], [True, False]]
    prob = np.random.default_rng(1).dirichlet(np.ones(4), (5, 6)).transpose(2, 0, 1)
    labels = labels_of(prob, 0.99)  # the threshold plays no part
    assert labels.dtype == np.uint8 and np.array_equal(labels, prob.argmax(0))


def test_class_names_come_from_the_header_and_binary_has_none() -> None:
    assert class_names(_model()) == CLASSES
    bare = create_model("test-classes", num_classes=4)
    assert class_names(bare) == ("background", "class1", "class2", "class3")
    assert class_names(create_model("test-classes", num_classes=1)) is None


def test_predict_resizes_probabilities_then_takes_the_argmax() -> None:
    model = _model()
    for shape in SHAPES.values():
        image = np.random.default_rng(2).integers(0, 255, (*shape, 3), dtype=np.uint8)
        pred = predict(model, image, execution=F32)
        expected = _direct(model, image)
        assert pred.prob.shape == (K, *shape) and pred.mask.shape == shape
        np.testing.assert_allclose(pred.prob, expected, atol=1e-5)
        assert pred.mask.dtype == np.uint8 and np.array_equal(pred.mask, pred.prob.argmax(0))
        np.testing.assert_allclose(pred.prob.sum(0), 1, atol=1e-5)
        assert set(pred.maps) == {"edge"} and pred.maps["edge"].shape == shape
        # Resizing the labels instead would give other labels along the class borders.
        with torch.no_grad():
            network = model(_input(image)).mask[0].argmax(0).numpy().astype(np.uint8)
        nearest = cv2.resize(network, shape[::-1], interpolation=cv2.INTER_NEAREST)
        assert not np.array_equal(nearest, pred.mask)


def test_predict_files_writes_class_ids_colour_overlay_and_probabilities(tmp_path: Path) -> None:
    images = _images(tmp_path / "images")
    model = _model()
    out = tmp_path / "out"
    report = predict_files(model, [tmp_path / "images"], out, overlay=True, colour=True,
                           probability_format="npy", workers=0, execution=F32)
    assert sorted(p.name for p in report.written) == sorted(
        f"{n}{suffix}" for n in SHAPES for suffix in
        (".png", "_overlay.png", "_colour.png", "_prob.npy"))
    colours = class_colours(K)
    for name, image in images.items():
        shape = SHAPES[name]
        labels = cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert labels.dtype == np.uint8 and labels.shape == shape
        assert set(np.unique(labels)) <= set(range(K)) and len(np.unique(labels)) > 1
        prob = np.load(out / f"{name}_prob.npy", allow_pickle=False)
        assert prob.dtype == np.float32 and prob.shape == (K, *shape)
        np.testing.assert_allclose(prob.sum(0), 1, atol=1e-5)
        np.testing.assert_allclose(prob, _direct(model, image), atol=1e-5)
        assert np.array_equal(labels, prob.argmax(0))

        colour = cv2.cvtColor(cv2.imread(str(out / f"{name}_colour.png")), cv2.COLOR_BGR2RGB)
        assert colour.shape[0] > shape[0] and colour.shape[1] >= shape[1]  # the legend below
        assert np.array_equal(colour[:shape[0], :shape[1]], colours[labels])
        legend = colour[shape[0]:].reshape(-1, 3)
        for c in colours:  # every class's swatch is drawn
            assert (legend == c).all(1).any()

        overlay = cv2.cvtColor(cv2.imread(str(out / f"{name}_overlay.png")), cv2.COLOR_BGR2RGB)
        assert overlay.shape == (*shape, 3)
        background = labels == 0
        assert np.array_equal(overlay[background], image[background])  # untinted
        for i in range(1, K):  # inside each class (off its outline): tinted in its colour
            inside = cv2.erode((labels == i).astype(np.uint8), np.ones((3, 3), np.uint8),
                               borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
            tinted = np.rint(image[inside] * 0.6 + colours[i].astype(np.float32) * 0.4)
            assert inside.any() and np.abs(overlay[inside] - tinted).max() <= 1


def test_the_palette_is_fixed_distinct_and_black_for_the_background() -> None:
    colours = class_colours(255)
    assert colours[0].tolist() == [0, 0, 0]
    assert [tuple(c) for c in colours[1:11]] == list(CLASS_COLOURS)
    assert len({tuple(c) for c in colours}) == 255
    assert np.array_equal(class_colours(4), colours[:4])  # the same whatever K
    labels = np.array([[0, 1], [2, 255]], np.uint8)
    assert colour_labels(labels, 3)[1, 1].tolist() == [255, 255, 255]  # no class: white


def test_k_probabilities_as_png_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    _images(tmp_path / "images")
    with pytest.raises(CondsegError, match="--probability-format npy"):
        predict_files(_model(), [tmp_path / "images"], tmp_path / "out",
                      probability_format="png")
    assert not (tmp_path / "out").exists()


def test_a_threshold_is_refused_for_k_classes_by_predict_as_by_evaluate(tmp_path: Path) -> None:
    images = _images(tmp_path / "images")
    with pytest.raises(CondsegError, match=r"argmax .* leave out the threshold \(--threshold 0.3"):
        predict_files(_model(), [tmp_path / "images"], tmp_path / "out", threshold=0.3)
    assert not (tmp_path / "out").exists()
    with pytest.raises(CondsegError, match="leave out the threshold"):
        predict(_model(), next(iter(images.values())), threshold=0.3)


def _mean_over_views(model: SegmentationModel, x: torch.Tensor, views) -> torch.Tensor:
    total = 0
    with torch.no_grad():
        for turns, axes in views:
            view = torch.rot90(x, turns, (-2, -1))
            z = model(torch.flip(view, axes) if axes else view).mask
            back = torch.rot90(torch.flip(z, axes) if axes else z, -turns, (-2, -1))
            total = total + torch.softmax(back, 1)
    return total / len(views)


@pytest.mark.parametrize("rotations", [False, True])
def test_tta_averages_the_softmax_of_the_views(rotations: bool) -> None:
    model = _model()
    x = torch.randn(2, 3, 16, 24)
    with eval_mode(tta := TTA(model, rotations=rotations)):
        probs = probabilities(tta, x)
    expected = _mean_over_views(model, x, DIHEDRAL if rotations else FLIPS)
    torch.testing.assert_close(probs["mask"], expected, atol=1e-6, rtol=0)
    with torch.no_grad():
        assert (probs["mask"] - torch.softmax(model(x).mask, 1)).abs().max() > 0.05


def test_sliding_windows_blend_the_class_probabilities() -> None:
    model = _model()
    x = torch.randn(1, 3, 50, 70)
    with eval_mode(net := SlidingWindow(model, (SIZE, SIZE), overlap=0.25)):
        probs = probabilities(net, x)
    with torch.no_grad():
        expected = sliding_window_inference(
            x, (SIZE, SIZE), 4, lambda w: torch.softmax(model(w).mask, 1), overlap=0.25,
            mode="gaussian")
        edge = sliding_window_inference(
            x, (SIZE, SIZE), 4, lambda w: torch.sigmoid(model(w).aux["edge"]), overlap=0.25,
            mode="gaussian")
    assert probs["mask"].shape == (1, K, 50, 70)
    torch.testing.assert_close(probs["mask"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(probs["edge"], edge[:, 0], atol=1e-6, rtol=0)
    # A pointwise model slid over a large image gives each pixel's own softmax.
    pointwise = _model(pointwise=True)
    image = np.random.default_rng(3).integers(0, 255, (70, 100, 3), dtype=np.uint8)
    got = predict(pointwise, image, options=InferenceOptions(sliding_window=48),
                  execution=F32).prob
    with torch.no_grad():
        own = torch.softmax(pointwise.conv(_input(image, None)), 1)[0].numpy()  # 70 % 8 != 0
    np.testing.assert_allclose(got, own, atol=1e-5)


def test_an_ensemble_averages_the_members_softmax() -> None:
    members = [{"name": "test-classes", "options": {"seed": seed, "num_classes": K}}
               for seed in (1, 2)]
    ensemble = Ensemble(members, num_classes=K).eval()
    ensemble.meta = dict(META)
    x = torch.randn(2, 3, SIZE, SIZE)
    with eval_mode(ensemble):
        probs = probabilities(ensemble, x)["mask"]
    with torch.no_grad():
        each = [torch.softmax(member(x).mask, 1) for member in ensemble.members]
    torch.testing.assert_close(probs, (each[0] + each[1]) / 2, atol=1e-6, rtol=0)
    assert (each[0] - each[1]).abs().max() > 0.1  # the members do differ
    image = np.random.default_rng(4).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    np.testing.assert_allclose(predict(ensemble, image, execution=F32).prob,
                               _direct(ensemble, image), atol=1e-5)
    # Composed with TTA and sliding windows (every view of every window of every member).
    large = np.random.default_rng(5).integers(0, 255, (70, 100, 3), dtype=np.uint8)
    both = predict(ensemble, large, options=InferenceOptions(tta=True, sliding_window=48),
                   execution=F32)
    assert both.prob.shape == (K, 70, 100) and both.mask.shape == (70, 100)
    np.testing.assert_allclose(both.prob.sum(0), 1, atol=1e-5)


def test_onnx_export_has_k_channels_and_the_classes_in_its_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    model = _model()
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.outputs == ["mask", "edge"] and report.max_abs_diff < 1e-4
    graph = onnx.load(str(report.path))
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["num_classes"] == str(K) and json.loads(props["classes"]) == list(CLASSES)
    assert "threshold" not in props and "argmax" in props["postprocessing"]
    dims = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]
            for o in graph.graph.output}
    assert dims == {"mask": ["batch", K, SIZE, SIZE], "edge": ["batch", 1, SIZE, SIZE]}
    x = torch.randn(3, 3, SIZE, SIZE)
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    got = session.run(["mask"], {"image": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).mask.numpy(), atol=1e-4)
    # The snippet printed for the user reads the file's K maps into class ids.
    image = np.random.default_rng(5).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "image.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(how_to_run(report.path), scope)
    labels = scope["labels"]
    assert labels.shape == (40, 56)
    agree = labels == predict(model, image, execution=F32).mask
    assert agree.mean() > 0.95  # OpenCV's bilinear resize, not torch's


def test_predict_cli_writes_class_ids_and_a_colour_png(tmp_path: Path) -> None:
    _images(tmp_path / "images")
    model = create_model("test-classes", num_classes=K)
    path = save_model(tmp_path / "m.safetensors", model, mean=META["mean"], std=META["std"],
                      input_size=SIZE, classes=CLASSES)
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(path), str(tmp_path / "images"), "--out",
                                 str(tmp_path / "out"), "--colour", "--overlay",
                                 "--probability-format", "npy", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "wrote 8 files" in result.output
    labels = cv2.imread(str(tmp_path / "out" / "odd.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == SHAPES["odd"] and labels.max() < K
    assert np.load(tmp_path / "out" / "odd_prob.npy").shape == (K, *SHAPES["odd"])
    refused = runner.invoke(app, ["predict", str(path), str(tmp_path / "images"), "--out",
                                  str(tmp_path / "png"), "--probability-format", "png"])
    assert refused.exit_code == 2 and "error:" in refused.output
    assert not (tmp_path / "png").exists()


def test_a_binary_model_keeps_its_outputs_and_may_ask_for_a_colour_png(tmp_path: Path) -> None:
    images = _images(tmp_path / "images")
    model = _model(num_classes=1)
    predict_files(model, [tmp_path / "images"], tmp_path / "out", colour=True, workers=0,
                  probability_format="png", execution=F32)
    for name, image in images.items():
        pred = predict(model, image, execution=F32)
        assert pred.prob.shape == SHAPES[name] and pred.mask.dtype == bool
        mask = cv2.imread(str(tmp_path / "out" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(mask, pred.mask.astype(np.uint8) * 255)  # 0/255 as ever
        colour = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / f"{name}_colour.png")),
                              cv2.COLOR_BGR2RGB)
        top = colour[:SHAPES[name][0], :SHAPES[name][1]]
        assert np.array_equal(top, class_colours(2)[pred.mask.astype(np.uint8)])


def test_export_cli_of_a_unet_of_classes(tmp_path: Path) -> None:
    """A packaged network, end to end: its model file of three classes exported by the CLI,
    checked with onnxruntime, the names in the metadata."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    model = create_model("unet", encoder="resnet18", num_classes=K).eval()
    path = save_model(tmp_path / "unet.safetensors", model, mean=META["mean"], std=META["std"],
                      input_size=SIZE, classes=CLASSES)
    result = CliRunner().invoke(app, ["export", str(path)])
    assert result.exit_code == 0, result.output
    assert "std and classes" in result.output and "argmax" in result.output
    onnx_path = tmp_path / "unet.onnx"
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(props["classes"]) == list(CLASSES) and props["num_classes"] == str(K)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, SIZE, SIZE)
    got = session.run(["mask"], {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).mask.numpy()
    assert got.shape == (2, K, SIZE, SIZE)
    np.testing.assert_allclose(got, expected, atol=1e-3)
