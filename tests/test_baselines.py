"""The smp baselines (U-Net, U-Net++, DeepLabV3+): the model contract, ImageNet weights through
timm like ConDSeg's encoder, and a short run through the engine for each."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from typer.testing import CliRunner

from condseg import cli
from condseg.config import load_config
from condseg.data.synthetic import synthesize
from condseg.errors import ModelError, WeightsUnavailableError
from condseg.evaluation.evaluate import evaluate
from condseg.inference.export import export_onnx
from condseg.inference.predict import predict_files
from condseg.models.base import ModelOutput
from condseg.models.model_file import load_model
from condseg.models.registry import create_model
from condseg.training import train

BASELINES = ("unet", "unetplusplus", "deeplabv3plus")
DIVISORS = {"unet": 32, "unetplusplus": 32, "deeplabv3plus": 16}
#: Narrow decoders keep the end-to-end runs short (and carry an smp option through the model file).
NARROW = {"unet": "[32,16,16,8,8]", "unetplusplus": "[32,16,16,8,8]", "deeplabv3plus": "32"}


@pytest.mark.parametrize("name", BASELINES)
def test_forward_shape_and_input_divisor(name: str) -> None:
    model = create_model(name, encoder="resnet18").eval()
    assert model.input_divisor == DIVISORS[name]
    assert model.encoder_module() is model.net.encoder
    height, width = 2 * model.input_divisor, 3 * model.input_divisor
    with torch.no_grad():
        out = model(torch.randn(2, 3, height, width))
    assert isinstance(out, ModelOutput)
    assert out.mask.shape == (2, 1, height, width)
    assert dict(out.aux) == {}


def test_options_pass_through_to_smp() -> None:
    model = create_model("deeplabv3plus", encoder="resnet18", encoder_output_stride=8,
                         decoder_channels=32)
    assert model.input_divisor == 8
    with pytest.raises(ModelError, match=r"unknown option\(s\) classes .*decoder_channels"):
        create_model("unet", encoder="resnet18", classes=2)


def test_default_unet_has_smp_parameter_count() -> None:
    import segmentation_models_pytorch as smp

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    reference = smp.Unet("resnet50", encoder_weights=None, classes=1)
    assert count(create_model("unet")) == count(reference) == 32_521_105


def test_encoder_weights_from_a_local_file(tmp_path) -> None:
    from safetensors.torch import save_file

    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.safetensors"
    save_file(reference.state_dict(), str(path))
    model = create_model("unet", encoder="resnet18", weights=path)
    encoder = model.net.encoder.model.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(encoder[key], value, msg=key)


def test_weights_unavailable_is_a_clear_error(tmp_path, monkeypatch) -> None:
    with pytest.raises(WeightsUnavailableError, match=r"not found: .*missing\.pth"):
        create_model("unet", encoder="resnet18", weights=tmp_path / "missing.pth")
    create = timm.create_model

    def offline(*args, pretrained: bool = False, **kwargs):
        if pretrained:
            raise OSError("no network")
        return create(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsUnavailableError, match=r"resnet50\.tv_in1k.*model\.weights=PATH"):
        create_model("deeplabv3plus", pretrained=True)


def test_normalization_is_the_encoders() -> None:
    """tf_efficientnet_lite0 was trained on [-1, 1] inputs: mean and std 0.5, not ImageNet's."""
    cfg = timm.get_pretrained_cfg("tf_efficientnet_lite0")
    model = create_model("unet", encoder="tf_efficientnet_lite0")
    assert model.default_normalization() == (tuple(cfg.mean), tuple(cfg.std)) != (
        create_model("unet", encoder="resnet18").default_normalization()
    )


@pytest.mark.parametrize("name", BASELINES)
def test_train_evaluate_predict_export(name: str, tmp_path) -> None:
    data = synthesize(tmp_path / "data", n_train=4, n_val=2, size=64)
    cfg = load_config("default", [
        f"method={name}", "model.options.encoder=resnet18", "model.pretrained=false",
        f"model.options.decoder_channels={NARROW[name]}",
        "data.size=64", "data.batch_size=2", "data.num_workers=0",
        "stages.train.max_epochs=1", "stages.train.limit_train_batches=2", "progress_bar=false",
    ])
    assert list(cfg.stages) == ["train"] and cfg.stages["train"].loss.name == "bce-dice"
    result = train(cfg, data, tmp_path / "run")

    model = load_model(result.model_file)
    assert model.name == name and model.meta["input_size"] == [64, 64]
    assert str(model.arch["options"]["decoder_channels"]).replace(" ", "") == NARROW[name]
    scores = evaluate(model, data, split="val")
    assert len(scores.rows) == 2 and 0 <= scores.summary["iou"]["mean"] <= 1

    image = tmp_path / "new.png"
    Image.fromarray(np.full((50, 70, 3), 120, np.uint8)).save(image)
    report = predict_files(model, [image], tmp_path / "pred")
    assert not report.failed and report.written
    mask = np.asarray(Image.open(next(p for p in report.written if p.suffix == ".png")))
    assert mask.shape[:2] == (50, 70)

    onnx = export_onnx(model, tmp_path / f"{name}.onnx")
    assert onnx.path.is_file() and onnx.max_abs_diff is not None and onnx.max_abs_diff < 1e-3


def test_cli_lists_the_baselines(monkeypatch) -> None:
    monkeypatch.setattr(cli.console, "width", 250)
    runner = CliRunner()
    for command in ("models", "methods"):
        result = runner.invoke(cli.app, [command])
        assert result.exit_code == 0, result.output
        listed = {line.split()[0] for line in result.output.splitlines() if line[:1].strip()}
        assert set(BASELINES) <= listed, result.output
