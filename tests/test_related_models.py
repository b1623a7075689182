"""MSNet, M2SNet and CHNet beyond the reference outputs (``test_reference.py``): the fixed
multi-scale filters, the encoder option, the checkpoint import through the CLI, and the
methods' recipes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from condseg.cli import app
from condseg.config import load_config
from condseg.convert import detect_architecture, rename_key
from condseg.errors import ModelError
from condseg.methods.msnet.subtraction import BoxFilter, Difference
from condseg.models.base import use_plain_kernels
from condseg.models.model_file import load_model
from condseg.models.registry import create_model
from condseg.recipes import list_methods
from condseg.training.hooks import create_batch_hook

AUTHORS_MEAN = tuple(v / 255 for v in (124.55, 118.90, 102.94))
AUTHORS_STD = tuple(v / 255 for v in (56.77, 55.97, 57.50))


@pytest.mark.parametrize("train", [False, True])
def test_box_filter_sums_every_channel_over_the_window(train: bool) -> None:
    """The fast path (channel sum, one-channel filter) equals the C→C all-ones convolution."""
    torch.manual_seed(0)
    box = BoxFilter(5, channels=8).train(train)
    with torch.no_grad():
        box.norm.weight.uniform_(0.5, 1.5)
        box.norm.bias.uniform_(-0.2, 0.2)
    x = torch.rand(2, 8, 9, 11)
    fast = box(x)
    box.plain_kernels = True
    plain = box(x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    box.norm = nn.Identity()  # the raw sums, by hand at one interior and one corner pixel
    raw = box(x)
    assert torch.allclose(raw[0, 3, 4, 5], x[0, :, 2:7, 3:8].sum())
    assert torch.allclose(raw[1, 0, 0, 0], x[1, :, :3, :3].sum())


def test_difference_resizes_the_deeper_map_and_adds_the_scales() -> None:
    torch.manual_seed(0)
    a, b = torch.rand(1, 4, 3, 3), torch.rand(1, 4, 6, 6)
    single = Difference((), channels=4)
    up = torch.nn.functional.interpolate(a, size=(6, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(single(a, b), (up - b).abs())
    multi = Difference((3, 5), channels=4).eval()
    expected = (up - b).abs() + sum((f(up) - f(b)).abs() for f in multi.filters)
    torch.testing.assert_close(multi(a, b), expected)


def test_fixed_filters_are_buffers_outside_the_state_dict() -> None:
    m2snet = create_model("m2snet")
    names = set(m2snet.state_dict())
    assert {"difference.filters.0.norm.weight", "difference.filters.1.norm.weight"} <= names
    assert not any(name.endswith("kernel") for name in names)
    kernels = {n: b for n, b in m2snet.named_buffers() if n.endswith("kernel")}
    assert {n: tuple(b.shape) for n, b in kernels.items()} == {
        "difference.filters.0.kernel": (1, 1, 3, 3), "difference.filters.1.kernel": (1, 1, 5, 5)}
    assert all(bool((b == 1).all()) for b in kernels.values())
    assert not any(p.shape[-1] in (3, 5) and "difference" in n
                   for n, p in m2snet.named_parameters())
    use_plain_kernels(m2snet)
    assert all(box.plain_kernels for box in m2snet.difference.filters)


def test_encoder_option_and_its_errors() -> None:
    net = create_model("msnet", encoder="resnet18").eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 64, 96)).mask.shape == (1, 1, 64, 96)
    assert net.input_divisor == 32 and create_model("chnet", encoder="resnet18").input_divisor == 16
    with pytest.raises(ModelError, match=r"'vgg11' gives feature strides \[1, 2, 4, 8, 16\]"):
        create_model("msnet", encoder="vgg11")
    with pytest.raises(ModelError, match=r"'efficientnet_b0' has a 16-channel stem"):
        create_model("m2snet", encoder="efficientnet_b0")
    with pytest.raises(ModelError, match=r"'convnext_atto' has fewer than the 5 feature levels"):
        create_model("msnet", encoder="convnext_atto")


def test_importer_recognises_and_renames_the_authors_keys(reference_dir: Path) -> None:
    def keys(model: str) -> list[str]:
        spec = json.loads((reference_dir / f"official_{model}_state_dict.json").read_text())
        return [name for name, _ in spec["state_dict"]]

    assert [detect_architecture(keys(m)) for m in ("msnet", "m2snet", "chnet")] == [
        "msnet", "m2snet", "chnet"]
    assert rename_key("resnet.layer1.0.downsample.1.weight", "msnet") == (
        "encoder.layer1.0.downsample.1.weight")
    assert rename_key("x3_dem_1.0.weight", "msnet") == "reduce.1.0.weight"
    assert rename_key("x5_x4.1.bias", "msnet") == "units.0.3.1.bias"
    assert rename_key("x3_x2_x1.0.weight", "m2snet") == "units.1.0.0.weight"
    assert rename_key("x5_x4_x3_x2_x1.0.bias", "msnet") == "units.3.0.0.bias"
    assert rename_key("x5_dem_4.1.running_mean", "msnet") == "apex.1.running_mean"
    assert rename_key("output4.0.weight", "msnet") == "decoder.2.0.weight"
    assert rename_key("output1.0.bias", "msnet") == "classifier.bias"
    assert rename_key("conv_5.norm.weight", "m2snet") == "difference.filters.1.norm.weight"
    assert rename_key("encode2.1.0.convs.2.weight", "chnet") == "encoder.layer1.0.convs.2.weight"
    assert rename_key("encode4.5.bn3.bias", "chnet") == "encoder.layer3.5.bn3.bias"
    assert rename_key("tf4.weight", "chnet") == "reduce.3.weight"


def test_convert_official_cli_round_trip(reference_dir: Path, tmp_path: Path) -> None:
    """The authors' CHNet weights, as DataParallel saves them under ``state_dict``, become a
    model file carrying their normalisation that reproduces their eval-mode outputs."""
    spec = importlib.util.spec_from_file_location(
        "deterministic_weights", reference_dir / "deterministic_weights.py")
    weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(weights)
    authors = json.loads((reference_dir / "official_chnet_state_dict.json").read_text())
    state = weights.fill_state_dict(authors["state_dict"])
    checkpoint = tmp_path / "chnet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, checkpoint)
    out = tmp_path / "chnet.safetensors"
    result = CliRunner().invoke(app, ["convert-official", str(checkpoint), str(out)])
    assert result.exit_code == 0, result.output
    assert "chnet" in result.output
    model = load_model(out)
    assert model.name == "chnet"
    np.testing.assert_allclose(model.meta["mean"], AUTHORS_MEAN)
    np.testing.assert_allclose(model.meta["std"], AUTHORS_STD)
    assert list(model.meta["input_size"]) == [352, 352]
    ref = np.load(reference_dir / "official_chnet_outputs_256.npz")["mask_logits"]
    with torch.no_grad():
        logits = model(weights.reference_input(2, 256, 256)).mask.numpy()
    assert np.abs(logits - ref).max() <= 1e-4 + 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("method", ["msnet", "m2snet", "chnet"])
def test_recipes_resolve_to_the_authors_training(method: str) -> None:
    assert method in list_methods()
    config = load_config("default", [f"method={method}"])
    stage = config.stages["train"]
    assert list(config.stages) == ["train"] and config.model.name == method
    assert config.data.size == 352
    np.testing.assert_allclose(config.data.mean, AUTHORS_MEAN)
    np.testing.assert_allclose(config.data.std, AUTHORS_STD)
    opt = stage.optimizer
    assert (opt.name, opt.momentum, opt.nesterov, opt.weight_decay) == ("sgd", 0.9, True, 5e-4)
    assert stage.schedule.name == "triangular"
    assert stage.batch_hook.name == "multiscale"
    assert stage.batch_hook.options == {}  # the sizes follow data.size: at 352, the authors'
    hook = create_batch_hook("multiscale", **stage.batch_hook.options)
    assert hook.resolved(config.data.size, 32).sizes == [224, 256, 288, 320, 352]
    aug = stage.augmentation
    assert (aug.p_rotate, aug.p_flip, aug.p_vflip) == (0.0, 0.5, 0.0)
    chnet = method == "chnet"
    assert (config.data.batch_size, stage.max_epochs) == ((32, 100) if chnet else (16, 50))
    assert (opt.lr, opt.encoder_lr) == ((0.05, 0.05) if chnet else (0.05, 0.005))
    assert stage.loss.name == "structure"
    assert stage.loss.options == ({} if chnet else {"lossnet": True})


def test_methods_command_lists_them() -> None:
    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 0
    assert all(name in result.output for name in ("msnet", "m2snet", "chnet"))
