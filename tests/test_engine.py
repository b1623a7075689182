"""The inference engine: BatchNorm folding (equal to the unfused model, and only where the data
flow proves it), the device/precision options, and the fast path through predict and evaluate
(batched, with loading workers, equal to the plain path in float32)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from condseg.cli import app
from condseg.data.synthetic import synthesize
from condseg.errors import ModelError
from condseg.evaluation.evaluate import evaluate
from condseg.inference.engine import (
    Execution,
    ExecutionError,
    cpu_supports_bf16,
    prepare,
)
from condseg.inference.predict import Predictor, predict, predict_files
from condseg.models.base import training_memory_format
from condseg.models.fusion import fold_batchnorm, foldable_pairs
from condseg.models.model_file import load_model, save_model
from condseg.models.registry import create_model

TINY = {"encoder": "resnet18", "width": 16}


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters far from the identity, so folding matters."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for tensor, low, high in ((module.running_mean, -0.2, 0.2),
                                          (module.running_var, 0.5, 1.5),
                                          (module.weight, 0.8, 1.2), (module.bias, -0.1, 0.1)):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low)
                                 + low)
    return model.eval()


@pytest.mark.parametrize(("name", "options"), [("condseg", TINY),
                                               ("unet", {"encoder": "resnet18"})])
def test_folding_keeps_the_function_and_removes_every_batchnorm(name: str, options: dict):
    torch.manual_seed(0)
    model = _randomise_batchnorm(create_model(name, **options))
    folded = copy.deepcopy(model)
    count = fold_batchnorm(folded, torch.randn(1, 3, 32, 32))
    assert count == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 10
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 32)  # another size than the probe's
    with torch.inference_mode():
        expected, got = model(x), folded(x)
    torch.testing.assert_close(got.mask, expected.mask, atol=1e-4, rtol=1e-4)
    assert set(got.aux) == set(expected.aux)
    for key in expected.aux:
        torch.testing.assert_close(got.aux[key], expected.aux[key], atol=1e-4, rtol=1e-4)


class Tricky(nn.Module):
    """One foldable pair and three that look like pairs by their names but are not."""

    def __init__(self) -> None:
        super().__init__()
        self.plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.conv_res, self.bn_res = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # residual reads conv
        self.conv_up, self.bn_up = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # resize in between
        self.conv_shared, self.bn_shared = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # BN reused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.plain(x)
        y = self.conv_res(x)
        x = self.bn_res(y) + y
        x = self.bn_up(F.interpolate(self.conv_up(x), scale_factor=2.0))
        return self.bn_shared(self.conv_shared(x)) + self.bn_shared(x)


def test_only_pairs_proved_by_the_data_flow_are_folded() -> None:
    torch.manual_seed(0)
    model = _randomise_batchnorm(Tricky())
    pairs = foldable_pairs(model, torch.randn(1, 3, 8, 8))
    assert pairs == [(model.plain[0], model.plain[1])]
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded, torch.randn(1, 3, 8, 8)) == 1
    assert isinstance(folded.plain[1], nn.Identity) and isinstance(folded.bn_res, nn.BatchNorm2d)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(Tricky().train(), x)


def test_execution_options_are_checked_with_one_line_errors() -> None:
    for bad, match in ((dict(device="gpu"), "device must be auto, cpu, cuda or cuda:N"),
                       (dict(precision="half"), "precision must be one of"),
                       (dict(device="cpu", precision="float16"), "float16 autocast is for CUDA"),
                       (dict(plain=True, precision="bfloat16"), "plain path is the float32"),
                       (dict(plain=True, compile=True), "drop --plain or --compile")):
        with pytest.raises(ExecutionError, match=match):
            Execution(**bad)
    if not torch.cuda.is_available():
        with pytest.raises(ExecutionError, match="torch sees no CUDA GPU"):
            Execution(device="cuda:0")
    cpu = Execution(device="cpu")
    assert cpu.autocast_dtype() == (torch.bfloat16 if cpu_supports_bf16() else None)
    assert cpu.record()["memory_format"] == "channels_last"
    assert Execution(device="cpu", plain=True).record() == {
        "path": "plain", "device": "cpu", "precision": "float32", "memory_format": "NCHW",
        "compile": False}
    assert Execution(device="cpu", precision="bfloat16").autocast_dtype() == torch.bfloat16


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = _randomise_batchnorm(create_model("condseg", **TINY))
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_model(path, model, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=32)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(40, 50), (32, 32), (30, 70), (48, 48), (32, 32)]):
        cv2.imwrite(str(folder / f"img{i}.png"), rng.integers(0, 255, (*shape, 3), np.uint8))
    return folder


def test_the_fast_path_equals_the_plain_path_and_leaves_the_model_alone(
    model_file: Path, images: Path
) -> None:
    model = load_model(model_file)
    image = images / "img0.png"
    plain = predict(model, image, execution=Execution(device="cpu", plain=True))
    fast = prepare(model, Execution(device="cpu", precision="float32"))
    got = predict(fast, image)
    np.testing.assert_allclose(got.prob, plain.prob, atol=1e-4)
    for key in ("fg", "bg", "uc"):
        np.testing.assert_allclose(got.maps[key], plain.maps[key], atol=1e-4)
    assert fast.folded > 50 and fast.record()["batchnorm_folded"] == fast.folded
    # the model itself is untouched: a copy was folded
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.fems[0].fuse[0].weight.is_contiguous()
    with pytest.raises(ModelError, match="prepared for"):
        prepare(fast, Execution(device="cpu", plain=True))
    assert prepare(fast) is fast


def test_a_copy_without_maps_skips_their_heads_and_keeps_the_mask(
    model_file: Path, tmp_path: Path
) -> None:
    model = load_model(model_file)
    execution = Execution(device="cpu", precision="float32")
    full, bare = prepare(model, execution), prepare(model, execution, maps=False)
    heads = {name: 0 for name in model.map_names}
    for name in heads:
        bare.model.aux_heads[name].register_forward_hook(
            lambda *_, name=name: heads.__setitem__(name, heads[name] + 1))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected, got = full(x), bare(x)
    torch.testing.assert_close(got.mask, expected.mask)
    assert set(expected.aux) == {"fg", "bg", "uc"} and not got.aux and bare.map_names == ()
    assert heads == {"fg": 0, "bg": 0, "uc": 0}
    assert model.map_names == ("fg", "bg", "uc")  # the original keeps its maps
    assert prepare(bare, maps=False) is bare and prepare(bare) is bare
    with pytest.raises(ModelError, match="without its maps"):
        prepare(bare, maps=True)
    image = np.zeros((40, 50, 3), np.uint8)
    assert predict(bare, image).maps == {} and set(predict(full, image).maps) == set(heads)
    with pytest.raises(ModelError, match="without its maps"):
        predict_files(bare, [], tmp_path, maps=True)
    plain = prepare(model, Execution(device="cpu", plain=True), maps=False)
    assert plain.map_names == model.map_names  # the reference runs the network as written


def test_batches_and_loading_workers_do_not_change_the_results(
    model_file: Path, images: Path, tmp_path: Path
) -> None:
    model = prepare(load_model(model_file), Execution(device="cpu", precision="float32"))
    runs = {}
    for batch_size, workers in ((1, 0), (3, 0), (3, 2)):
        out = tmp_path / f"b{batch_size}w{workers}"
        report = predict_files(model, [images], out, batch_size=batch_size, workers=workers,
                               probability_format="npy", overlay=True)
        assert not report.failed
        runs[batch_size, workers] = {p.name: np.load(p) for p in sorted(out.glob("*.npy"))}
    assert len(runs[1, 0]) == 5
    for name, prob in runs[1, 0].items():  # a batch of 1 vs of 3: other kernels, same result
        np.testing.assert_allclose(runs[3, 0][name], prob, atol=1e-5)
        np.testing.assert_array_equal(runs[3, 2][name], runs[3, 0][name])  # workers: identical
    overlay = cv2.imread(str(tmp_path / "b3w2" / "img2_overlay.png"))
    assert overlay.shape == (30, 70, 3)


def test_evaluate_records_and_runs_the_chosen_path(model_file: Path, tmp_path: Path) -> None:
    data = synthesize(tmp_path / "data", n_train=1, n_val=3, size=48, seed=0)
    model = load_model(model_file)
    results = {}
    for resolution in ("network", "original"):
        for path, execution in (("plain", Execution(device="cpu", plain=True)),
                                ("fast", Execution(device="cpu", precision="float32"))):
            result = evaluate(model, data, resolution=resolution, execution=execution,
                              batch_size=2, workers=2 if path == "fast" else 0)
            assert result.protocol["execution"]["path"] == path
            results[resolution, path] = result
        for plain, fast in zip(results[resolution, "plain"].rows,
                               results[resolution, "fast"].rows, strict=True):
            assert plain["name"] == fast["name"]
            assert fast["mae"] == pytest.approx(plain["mae"], abs=1e-5)
    assert results["original", "fast"].protocol["execution"]["batchnorm_folded"] > 50


def test_cli_names_a_device_or_precision_it_cannot_use(model_file: Path, images: Path,
                                                       tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["predict", str(model_file), str(images / "img1.png"), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, [*base, "--device", "tpu"])
    assert result.exit_code == 2 and "device must be auto, cpu, cuda or cuda:N" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, [*base, "--precision", "half"])
    assert result.exit_code == 2 and "half" in result.output
    result = runner.invoke(app, [*base, "--plain", "--precision", "bfloat16"])
    assert result.exit_code == 2 and "plain path is the float32" in result.output
    result = runner.invoke(app, [*base, "--precision", "float32", "--batch-size", "2",
                                 "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "img1.png").is_file()


def test_training_layout_is_channels_last_on_a_gpu_and_nchw_on_the_cpu() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert training_memory_format(cpu) == torch.contiguous_format
    assert training_memory_format(gpu) == torch.channels_last
    assert training_memory_format(cpu, "channels_last") == torch.channels_last
    assert training_memory_format(gpu, "contiguous") == torch.contiguous_format
    assert training_memory_format(gpu, plain=True) == torch.contiguous_format  # the reference
    with pytest.raises(ModelError, match="'NCHW'"):
        training_memory_format(cpu, "NCHW")


def test_evaluation_is_float32_unless_asked_and_says_so(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluation numbers are the product: float32 by default even on a CPU with native bf16
    (the probe says so here), while predict keeps the fast default; the printed table and
    summary.json state the device and the precision."""
    monkeypatch.setattr("condseg.inference.engine.cpu_supports_bf16", lambda: True)
    monkeypatch.setattr("condseg.cli.console.width", 250)
    data = synthesize(tmp_path / "data", n_train=1, n_val=2, size=48, seed=0)
    runner = CliRunner()
    for asked, precision in ((), "float32"), (("--precision", "auto"), "bfloat16"):
        out = tmp_path / f"eval-{precision}"
        result = runner.invoke(app, ["evaluate", str(model_file), "--data", str(data),
                                     "--device", "cpu", "--workers", "0", "--out", str(out),
                                     *asked])
        assert result.exit_code == 0, result.output
        execution = json.loads((out / "summary.json").read_text())["protocol"]["execution"]
        assert (execution["device"], execution["precision"]) == ("cpu", precision)
        assert f"(2 images, network resolution, cpu {precision})" in result.output
    assert evaluate(load_model(model_file), data).protocol["execution"]["precision"] == "float32"
    assert Predictor(load_model(model_file)).prepared.dtype == torch.bfloat16  # predict: auto
