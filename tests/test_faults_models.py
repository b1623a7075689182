"""Faults in model files and numbers (issue 15 classes 6 and 8, issue 16 point 8): non-finite
weights and outputs, headers that would reach the network or nest without end, bad authors'
checkpoints, damaged checkpoints on resume, option values out of their domain, export without
its optional packages, and what an exported file tells its user."""

from __future__ import annotations

import json
import math
import socket
import sys
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import condseg
from condseg.cli import app
from condseg.convert import load_official
from condseg.data.synthetic import synthesize
from condseg.errors import (
    CheckpointError,
    CondsegError,
    ConversionError,
    ExportError,
    ModelError,
    ModelFileError,
    NonFiniteOutputError,
)
from condseg.evaluation.evaluate import evaluate
from condseg.inference.engine import prepare
from condseg.inference.export import export_onnx
from condseg.inference.predict import predict
from condseg.layout import StageDir
from condseg.models.base import ModelOutput, SegmentationModel
from condseg.models.model_file import load_model, read_header, save_model
from condseg.models.registry import create_model, list_models, register_model
from condseg.training.checkpoints import previous_of, resume_point

TINY = "test-faults-conv"
SIZE = 16


@register_model(TINY, description="one convolution; NaN for bright images, fold (tests)")
class TinyConv(SegmentationModel):
    """``nan_above``: NaN logits for images whose mean input exceeds it (finite weights);
    ``fold``: an identity through unfold/fold, which ONNX has only from opset 18 (Col2Im)."""

    encoder_path = None
    input_divisor = 4

    def __init__(self, nan_above: float | None = None, fold: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.nan_above, self.fold = nan_above, fold

    def forward(self, x: torch.Tensor) -> ModelOutput:
        if self.fold:
            x = F.fold(F.unfold(x, 2, stride=2), x.shape[-2:], 2, stride=2)
        logits = self.conv(x)
        if self.nan_above is not None:
            bright = x.mean(dim=(1, 2, 3), keepdim=True) > self.nan_above
            logits = torch.where(bright, torch.full_like(logits, math.nan), logits)
        return ModelOutput(logits)


def tiny_file(path: Path, **options: object) -> Path:
    torch.manual_seed(0)
    return save_model(path, create_model(TINY, **options), mean=(0.5,) * 3, std=(0.25,) * 3,
                      input_size=SIZE)


def forged(source: Path, target: Path, text: str | None = None, **changes: object) -> Path:
    """``source``'s tensors (``changes``: some replaced) under its header, or ``text``."""
    with safe_open(str(source), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        header = f.metadata()["condseg"]
    save_file({**tensors, **changes}, str(target), metadata={"condseg": text or header})
    return target


def one_error_line(result, *names: str) -> None:
    """The CLI's answer to a user error: exit 2 and one line naming what was wrong."""
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and result.output.count("\n") == 1, result.output
    for name in names:
        assert name in result.output.replace("\n", ""), (name, result.output)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_file(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for name, value in (("dark", 20), ("bright", 230)):
        cv2.imwrite(str(folder / f"{name}.png"), np.full((24, 20, 3), value, np.uint8))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth"), n_train=2, n_val=2, size=SIZE)


# Class 6: non-finite weights and outputs -------------------------------------------------------

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused_at_load(
    model_file: Path, tmp_path: Path, value: float
) -> None:
    weight = load_model(model_file).conv.weight.detach().clone()
    weight[0, 1, 2, 0] = value
    path = forged(model_file, tmp_path / "bad.safetensors", **{"conv.weight": weight})
    with pytest.raises(ModelFileError, match=r"tensor 'conv\.weight' holds NaN or infinite") as e:
        load_model(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_cli_refuses_a_nan_model_before_writing(
    model_file: Path, tmp_path: Path, images: Path, data: Path
) -> None:
    weight = torch.full_like(load_model(model_file).conv.weight, math.nan)
    path = forged(model_file, tmp_path / "nan.safetensors", **{"conv.weight": weight})
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(path), str(images), "--out", str(out)])
    one_error_line(result, str(path), "conv.weight")
    result = CliRunner().invoke(app, ["evaluate", str(path), "--data", str(data), "--out",
                                      str(out)])
    one_error_line(result, str(path), "conv.weight")
    assert not out.exists()
    model = create_model(TINY)
    with torch.no_grad():
        model.conv.bias.fill_(math.inf)
    with pytest.raises(ModelFileError, match=r"tensor 'conv\.bias' holds NaN or infinite"):
        save_model(tmp_path / "inf.safetensors", model, mean=None, std=None, input_size=SIZE)
    assert not (tmp_path / "inf.safetensors").exists()


def test_nan_outputs_are_refused_by_image_name(tmp_path: Path, images: Path, data: Path) -> None:
    """Finite weights, NaN probabilities (bright images): never written as an empty mask."""
    path = tiny_file(tmp_path / "nan-out.safetensors", nan_above=0.5)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(path), str(images), "--out", str(out),
                                      "--workers", "0", "--device", "cpu"])
    one_error_line(result, str(images / "bright.png"), "NaN probabilities", "float32")
    assert not (out / "bright.png").exists()
    model = load_model(path)
    with pytest.raises(NonFiniteOutputError, match="for image 0"):
        predict(model, np.full((8, 8, 3), 255, np.uint8))
    assert predict(model, np.zeros((8, 8, 3), np.uint8)).mask.shape == (8, 8)
    everything = load_model(tiny_file(tmp_path / "all-nan.safetensors", nan_above=-10.0))
    first = (data / "val.txt").read_text().split()[0]
    for resolution in ("network", "original"):
        with pytest.raises(NonFiniteOutputError, match=first):
            evaluate(everything, data, resolution=resolution, workers=0)


# Class 6: headers that would reach the network, nest or grow without end ---------------------

@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every attempt to resolve a host or open a connection is recorded and fails."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access in a test that forbids it")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_the_network_guard_sees_a_request(no_network: list[object]) -> None:
    with pytest.raises(OSError):
        urllib.request.urlopen("http://example.com", timeout=1)
    assert no_network


SOURCES = ["hf-hub:timm/resnet18.a1_in1k", "hf_hub:timm/resnet18", "tu-hf-hub:timm/resnet18",
           "local-dir:/tmp/encoder", "https://example.com/resnet18.pth", "/tmp/resnet18",
           "timm/resnet18", "..\\resnet18"]


@pytest.mark.parametrize("encoder", SOURCES)
def test_a_header_naming_a_hub_url_or_path_opens_no_socket(
    model_file: Path, tmp_path: Path, no_network: list[object], encoder: str
) -> None:
    header = read_header(model_file)
    for arch in ({"name": "condseg", "options": {"encoder": encoder}},
                 {"name": "ensemble", "options": {"members": [
                     {"name": "condseg", "options": {"width": 16, "encoder": encoder}}]}}):
        path = forged(model_file, tmp_path / "hub.safetensors", json.dumps({**header,
                                                                            "arch": arch}))
        with pytest.raises(ModelFileError, match=r"names a hub, URL or path") as e:
            load_model(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert no_network == []


def test_nested_oversized_or_odd_headers_are_one_line(model_file: Path, tmp_path: Path) -> None:
    header = read_header(model_file)
    text = json.dumps(header)
    deep = 100_000
    cases = {
        "nested more than 32 levels": json.dumps({**header, "config": {"a": [[[[[[[[[[[[[[[[[[[
            [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}),
        "nested more than 32 levels deep": text[:-1] + ', "x": ' + "[" * deep + "]" * deep + "}",
        "characters, more than a model file's": json.dumps({**header, "config": {
            "notes": "x" * 2_000_000}}),
        "config must be null or a JSON object": json.dumps({**header, "config": [1]}),
        "metrics must be null or a JSON object": json.dumps({**header, "metrics": "high"}),
    }
    for message, forged_text in cases.items():
        path = forged(model_file, tmp_path / "odd.safetensors", forged_text)
        with pytest.raises(ModelFileError, match=message) as e:
            load_model(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


# Class 6: convert-official on what is not a plain state dict of the authors' code -------------

@pytest.mark.parametrize(("content", "message"), [
    ([torch.zeros(1)], "expected a state dict, found list"),
    ({}, "the state dict is empty"),
    ({"state_dict": [1, 2]}, "expected a state dict, found list"),
    ({1: torch.zeros(1)}, "key 1 is a int, not a parameter name"),
    ({"cdfa1.v.weight": 3}, "'cdfa1.v.weight' holds a int, not a tensor"),
    ({"cdfa1.v.weight": [torch.zeros(1)]}, "'cdfa1.v.weight' holds a list, not a tensor"),
    ({"fc.weight": torch.zeros(1)}, "not a checkpoint of the authors'"),
])
def test_convert_official_refuses_what_is_not_a_state_dict(
    tmp_path: Path, content: object, message: str
) -> None:
    path = tmp_path / "authors.pth"
    torch.save(content, path)
    out = tmp_path / "ours.safetensors"
    result = CliRunner().invoke(app, ["convert-official", str(path), str(out)])
    one_error_line(result, str(path), message)
    assert not out.exists()


@pytest.mark.slow
def test_convert_official_refuses_wrong_shapes_and_non_finite_tensors(tmp_path: Path) -> None:
    """Net_0 in the authors' key names (ours, with their classifier name)."""
    with torch.device("meta"):
        layout = create_model("condseg-net0").state_dict()
    theirs = {k.replace("classifier.", "head.conv_fuse.", 1): torch.zeros(v.shape, dtype=v.dtype)
              for k, v in layout.items()}
    key = "encoder.layer1.0.conv1.weight"
    for changed, message in (
        (torch.zeros(3, 3), rf"of another shape: {key} \[3, 3\] \(ours \[64, 64, 1, 1\]\)"),
        (torch.full_like(theirs[key], math.nan), rf"tensor '{key}' holds NaN or infinite"),
    ):
        path = tmp_path / "authors.pth"
        torch.save({**theirs, key: changed}, path)
        with pytest.raises(ConversionError, match=message) as e:
            load_official(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    torch.save(theirs, path)
    assert load_official(path).name == "condseg-net0"  # the intact file converts


# Class 6: damaged checkpoints of an unfinished stage on resume --------------------------------

@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_a_damaged_best_checkpoint_is_one_line_and_a_good_one_is_a_fallback(
    tmp_path: Path, damage: str
) -> None:
    stage = StageDir(tmp_path)
    stage.checkpoints.mkdir()
    last, best = stage.last_checkpoint, stage.best_checkpoint
    torch.save({"global_step": 2}, best)
    torch.save({"global_step": 4}, last)
    damaged = {"truncated": best.read_bytes()[:40], "empty": b"",
               "random": np.random.default_rng(0).bytes(4096)}[damage]
    last.write_bytes(damaged)
    previous_of(last).write_bytes(damaged)
    chosen, warning = resume_point(stage)
    assert chosen == best and str(best) in warning and "trained again" in warning
    best.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="best model so far is lost") as e:
        resume_point(stage)
    message = str(e.value)
    assert str(best) in message and f"delete {stage.checkpoints}" in message
    assert "\n" not in message


def test_train_resume_past_a_damaged_best_checkpoint_is_one_line(
    data: Path, tmp_path: Path
) -> None:
    from condseg.config import load_config

    run = tmp_path / "run"
    checkpoints = run / "stage1" / "checkpoints"
    checkpoints.mkdir(parents=True)
    config = load_config("demo", ["data.size=16", "model.options.width=16", "precision=32",
                                  f"data.root={data.resolve()}"])
    (run / "config.yaml").write_text(config.to_yaml())
    torch.save({"global_step": 1}, checkpoints / "last.ckpt")
    (checkpoints / "best.ckpt").write_bytes(b"")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--data", str(data)])
    assert result.output.startswith("method condseg: device cpu")  # the run header, then:
    error = result.output[result.output.index("error:"):]
    assert result.exit_code == 2 and error.count("\n") == 1, result.output
    for name in (str(checkpoints / "best.ckpt"), "is damaged", f"delete {checkpoints}"):
        assert name in error, (name, error)
    log = Path("train.log")  # the attempt is logged, with the error that ended it
    assert sorted(p.relative_to(run) for p in run.rglob("*") if p.relative_to(run) != log) == before
    assert "is damaged" in (run / log).read_text().splitlines()[-1]



def test_extending_a_finished_stage_past_a_damaged_last_checkpoint_is_one_line(
    data: Path, tmp_path: Path
) -> None:
    """A finished stage keeps no best.ckpt: with its last.ckpt damaged, extending it must not
    train it again from scratch over its model file."""
    from condseg.config import load_config

    run = tmp_path / "run"
    checkpoints = run / "stage1" / "checkpoints"
    checkpoints.mkdir(parents=True)
    overrides = ["data.size=16", "model.options.width=16", "precision=32",
                 "stages.stage1.max_epochs=1", f"data.root={data.resolve()}"]
    (run / "config.yaml").write_text(load_config("demo", overrides).to_yaml())
    (checkpoints / "last.ckpt").write_bytes(b"damaged")
    model = run / "stage1" / "model.safetensors"
    model.write_bytes(b"the user's model")
    (run / "stage1" / "result.json").write_text(json.dumps({
        "model_file": "stage1/model.safetensors", "best_checkpoint": None, "max_epochs": 1,
        "stopped_early": False, "metrics": {"miou": 0.5, "epoch": 1}}))
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--data", str(data),
                                      "--stage", "stage1", "stages.stage1.max_epochs=2"])
    error = result.output[result.output.index("error:"):]
    assert result.exit_code == 2 and error.count("\n") == 1, result.output
    assert "stage1 has finished" in error and str(checkpoints / "last.ckpt") in error
    assert model.read_bytes() == b"the user's model"

# Class 6: option values outside their domain ---------------------------------------------------

@pytest.mark.parametrize(("option", "value", "message"), [
    ("--threshold", "0", "threshold (--threshold) must be a probability strictly between"),
    ("--threshold", "1", "threshold (--threshold)"),
    ("--threshold", "1.5", "threshold (--threshold)"),
    ("--threshold", "-0.1", "threshold (--threshold)"),
    ("--threshold", "nan", "threshold (--threshold)"),
    ("--batch-size", "0", "batch size (--batch-size) must be an integer >= 1"),
    ("--workers", "-1", "workers (--workers) must be an integer >= 0"),
    ("--overlap", "1", "overlap (--overlap) must be in [0, 1)"),
    ("--overlap", "nan", "overlap (--overlap)"),
    ("--sliding-window", "0", "sliding_window (--sliding-window) must be a positive"),
])
def test_predict_and_evaluate_refuse_values_outside_their_domain(
    model_file: Path, images: Path, data: Path, tmp_path: Path, option: str, value: str,
    message: str,
) -> None:
    out = tmp_path / "out"
    for command in (["predict", str(model_file), str(images)],
                    ["evaluate", str(model_file), "--data", str(data), "--resolution",
                     "original", "--save-masks", str(out / "masks")]):
        result = CliRunner().invoke(app, [*command, "--out", str(out), option, value])
        one_error_line(result, message, value)
        assert not out.exists()


def test_the_library_refuses_thresholds_outside_0_1(model_file: Path, data: Path) -> None:
    model = load_model(model_file)
    image = np.zeros((8, 8, 3), np.uint8)
    for threshold in (0.0, 1.0, math.nan, -1, 2):
        with pytest.raises(CondsegError, match="threshold"):
            predict(model, image, threshold=threshold)
        with pytest.raises(CondsegError, match="threshold"):
            evaluate(model, data, threshold=threshold)


@pytest.mark.parametrize(("options", "message"), [
    (["--size", "0"], "input size 0x0"),
    (["--size", "6"], "multiples of 4"),
    (["--size", "100000"], "beyond 8192 pixels"),
    (["--opset", "99"], "opset must be from 7 to 20"),
    (["--opset", "6"], "opset must be from 7 to 20"),
])
def test_export_refuses_sizes_and_opsets_it_cannot_write(
    model_file: Path, tmp_path: Path, options: list[str], message: str
) -> None:
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(app, ["export", str(model_file), "--out", str(out), *options])
    one_error_line(result, message)
    assert not out.exists()


# Class 8: export without its optional packages, or at an opset lacking an operator ------------

@pytest.mark.parametrize("missing", [["onnx"], ["onnxruntime"], ["onnx", "onnxruntime"]])
def test_export_without_onnx_says_how_to_install_it(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: list[str]
) -> None:
    for module in missing:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(app, ["export", str(model_file), "--out", str(out)])
    one_error_line(result, f"missing: {', '.join(missing)}", 'pip install "condseg[onnx]"')
    assert not out.exists()


def test_an_operator_missing_at_the_opset_is_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    model = create_model(TINY, fold=True)
    with pytest.raises(ExportError, match=r"cannot be exported at opset 17 \(.*col2im") as e:
        export_onnx(model, tmp_path / "fold.onnx", size=SIZE, opset=17)
    assert "\n" not in str(e.value) and not (tmp_path / "fold.onnx").exists()
    assert "Torch IR graph" not in capfd.readouterr().err  # torch's dump is held back
    assert export_onnx(model, tmp_path / "fold.onnx", size=SIZE).max_abs_diff < 1e-5


# Issue 16 point 8: deployment ------------------------------------------------------------------

def test_export_writes_metadata_and_prints_a_snippet_that_runs(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "tiny.onnx"
    result = CliRunner().invoke(app, ["export", str(model_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    graph = onnx.load(str(out))
    props = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(props["input_size"]) == [SIZE, SIZE]
    assert json.loads(props["mean"]) == [0.5] * 3 and json.loads(props["std"]) == [0.25] * 3
    assert (props["model"], props["threshold"], props["outputs"]) == (TINY, "0.5", "mask")
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*graph.graph.input, *graph.graph.output]}
    assert shapes == {"image": ["batch", 3, SIZE, SIZE], "mask": ["batch", 1, SIZE, SIZE]}
    snippet = result.output[result.output.index("import cv2"):]
    monkeypatch.chdir(tmp_path)
    model = load_model(model_file)
    for shape in ((40, 36, 3), (10, 12, 3)):  # shrunk, enlarged
        image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        cv2.imwrite("image.png", image[..., ::-1])
        scope: dict[str, object] = {}
        exec(snippet, scope)  # the printed program, as a user would paste it
        expected = predict(model, image, execution=condseg.Execution(plain=True))
        np.testing.assert_allclose(scope["probability"], expected.prob, atol=2e-3)


def test_the_public_api_is_listed_and_resolves() -> None:
    names = set(condseg.__all__)
    assert {"predict", "predict_files", "evaluate", "export_onnx", "convert_official",
            "load_model", "train", "ModelError", "CondsegError"} <= names
    assert names <= set(dir(condseg))
    for name in names:
        assert getattr(condseg, name) is not None
    assert issubclass(condseg.ModelError, condseg.CondsegError)


def test_a_size_a_model_cannot_take_is_a_model_error() -> None:
    model = create_model("condseg", encoder="resnet18", width=16).eval()
    for net in (model, prepare(model, condseg.Execution(device="cpu"))):
        with pytest.raises(ModelError, match=r"input size 72x72 does not suit condseg.*"
                                             r"multiples of 16"):
            net(torch.zeros(1, 3, 72, 72))


@pytest.mark.slow
def test_every_registered_model_checks_its_input() -> None:
    """The check is the model contract's (a forward pre-hook), so no family is left out."""
    checked = 0
    for name in list_models():
        try:
            with torch.device("meta"):
                net = create_model(name)
        except CondsegError:  # the ensemble needs members
            continue
        with pytest.raises(ModelError, match=r"\(B, 3, H, W\)"):
            net(torch.empty(1, 4, 64, 64, device="meta"))
        odd = 2 * net.input_divisor + 1
        if net.input_divisor > 1:
            with pytest.raises(ModelError, match=f"{odd}x{odd}"):
                net(torch.empty(1, 3, odd, odd, device="meta"))
        checked += 1
    assert checked >= 9


@pytest.mark.parametrize(("option", "value"), [("--size", "0"), ("--size", "4"),
                                               ("--train", "-1"), ("--val", "0")])
def test_data_synth_refuses_counts_and_sizes_outside_their_domain(
    tmp_path: Path, option: str, value: str
) -> None:
    out = tmp_path / "synth"
    result = CliRunner().invoke(app, ["data", "synth", str(out), option, value])
    one_error_line(result, f"({option}) must be an integer", value)
    assert not out.exists()
