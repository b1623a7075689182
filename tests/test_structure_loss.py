"""The structure loss (weighted BCE + weighted IoU) of MSNet/M2SNet/CHNet and LossNet."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file

import condseg
from condseg.errors import ConfigError, WeightsUnavailableError
from condseg.losses import create_loss
from condseg.losses.lossnet import LossNet
from condseg.losses.structure import structure_parts
from condseg.models.base import ModelOutput
from condseg.training.module import SegmentationModule


def reference(logits: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """wBCE and wIoU of one (H, W) image, the 31×31 zero-padded mean computed by loops."""
    h, w = target.shape
    padded = np.zeros((h + 30, w + 30))
    padded[15:15 + h, 15:15 + w] = target
    pooled = np.array([[padded[i:i + 31, j:j + 31].sum() / 961 for j in range(w)]
                       for i in range(h)])
    weight = 1 + 5 * np.abs(pooled - target)
    prob = 1 / (1 + np.exp(-logits))
    bce = -(target * np.log(prob) + (1 - target) * np.log(1 - prob))
    wbce = (weight * bce).sum() / weight.sum()
    inter = (weight * prob * target).sum()
    union = (weight * (prob + target)).sum()
    return wbce, 1 - (inter + 1) / (union - inter + 1)


def call(loss: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor) -> dict:
    return loss({"image": ModelOutput(logits)}, target)


def test_structure_loss_by_hand() -> None:
    # Logits 0 on an empty 4×4 mask: w = 1, bce = ln 2 everywhere, so wBCE = ln 2;
    # Σw·P·Y = 0 and Σw·(P+Y) = 16·0.5 = 8, so wIoU = 1 − 1/9.
    out = call(create_loss("structure"), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    assert out["wbce"].item() == pytest.approx(math.log(2), rel=1e-6)
    assert out["wiou"].item() == pytest.approx(8 / 9, rel=1e-6)
    assert out["loss"].item() == pytest.approx(math.log(2) + 8 / 9, rel=1e-6)
    assert set(out) == {"loss", "wbce", "wiou"}
    # A 2×2 object in a 4×4 image: every 31×31 window covers the whole image, so the pooled
    # mask is 4/961 everywhere and w = 6 − 20/961 on the object, 1 + 20/961 off it.
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :2] = 1
    logits = torch.tensor([[2.0, 1.0, -1.0, 0.5], [3.0, -0.5, -2.0, -3.0],
                           [-1.0, 0.0, -4.0, 1.5], [-2.0, -1.0, -0.5, -3.0]]).view(1, 1, 4, 4)
    inside, outside = 6 - 20 / 961, 1 + 20 / 961
    weight = np.where(target[0, 0].numpy() == 1, inside, outside)
    assert weight.sum() == pytest.approx(4 * inside + 12 * outside)
    wbce, wiou = structure_parts(logits, target)
    expected = reference(logits[0, 0].double().numpy(), target[0, 0].double().numpy())
    assert (wbce.item(), wiou.item()) == pytest.approx(expected, rel=1e-6)


def test_structure_loss_per_image_then_batch_mean_in_float32() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 40, 36) * 3
    target = torch.zeros(2, 1, 40, 36)
    target[0, :, 5:30, 4:20] = 1  # a large object (the 31×31 window does not cover it)
    target[1, :, 33:37, 30:34] = 1  # a small one near the border
    logits = logits.bfloat16()  # as under bf16 autocast: the sums must still run in float32
    expected = [reference(logits[i, 0].double().numpy(), target[i, 0].double().numpy())
                for i in range(2)]
    wbce, wiou = structure_parts(logits, target)
    assert wbce.tolist() == pytest.approx([e[0] for e in expected], rel=1e-5)
    assert wiou.tolist() == pytest.approx([e[1] for e in expected], rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = call(create_loss("structure"), logits, target)
    assert out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(sum(a + b for a, b in expected) / 2, rel=1e-5)


def test_lossnet_without_weights_is_refused_at_once(tmp_path, monkeypatch) -> None:
    """Offline with an empty torch hub cache: one line naming both options, no download tried,
    and a training run is refused before its run directory exists."""
    def unreachable(*args, **kwargs):
        raise OSError("no route")

    def download(*args, **kwargs):
        raise AssertionError("no download may be tried offline")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", download)
    with pytest.raises(WeightsUnavailableError) as error:
        create_loss("structure", lossnet=True)
    message = str(error.value)
    assert "\n" not in message
    assert "loss.options.lossnet=false" in message
    assert "loss.options.lossnet_weights=PATH" in message
    config = condseg.load_config(
        "default", ["stages.stage2.loss={name: structure, options: {lossnet: true}}"])
    with pytest.raises(condseg.CondsegError) as refused:
        condseg.train(config, tmp_path / "data", tmp_path / "run")
    # The keys it suggests are full keys of the stage, which load_config takes.
    for key in ("stages.stage2.loss.options.lossnet=false",
                "stages.stage2.loss.options.lossnet_weights=PATH"):
        assert key in str(refused.value)
    turned_off = condseg.load_config(
        "default", ["stages.stage2.loss={name: structure, options: {lossnet: true}}",
                    "stages.stage2.loss.options.lossnet=false"])
    assert turned_off.stages["stage2"].loss.options == {"lossnet": False}
    assert not (tmp_path / "run").exists()


def test_lossnet_bad_options_and_files(tmp_path, vgg_file) -> None:
    with pytest.raises(ConfigError, match="lossnet=true"):
        create_loss("structure", lossnet_weights=str(vgg_file))
    with pytest.raises(ConfigError, match="lossnet_weight must be >= 0"):
        create_loss("structure", lossnet_weight=-1)
    with pytest.raises(WeightsUnavailableError, match=r"not found: .*missing\.pth"):
        LossNet(tmp_path / "missing.pth")
    state = load_file(vgg_file)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if k != "features.21.bias"}, partial)
    with pytest.raises(WeightsUnavailableError, match=r"partial\.pth lacks .*features\.21\.bias"):
        LossNet(partial)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsUnavailableError, match=r"garbage\.safetensors cannot be read"):
        LossNet(garbage)


def test_lossnet_from_a_local_file(vgg_file) -> None:
    """Zero for identical maps, positive otherwise; the gradient reaches the prediction but no
    VGG parameter; the VGG stays in eval mode and out of state dicts, which still load."""
    loss = create_loss("structure", lossnet=True, lossnet_weights=str(vgg_file))
    lossnet = loss.lossnet
    saved = load_file(vgg_file)
    torch.testing.assert_close(lossnet.vgg[0][0].weight, saved["features.0.weight"])
    torch.testing.assert_close(lossnet.vgg[3].state_dict()["21.bias"], saved["features.21.bias"])
    loss.train()
    assert lossnet.training and not any(m.training for m in lossnet.vgg.modules())
    assert not any(p.requires_grad for p in lossnet.parameters())

    target = torch.zeros(1, 1, 64, 64)
    target[..., 16:48, 20:40] = 1
    assert lossnet(target, target).item() == 0
    logits = torch.randn(1, 1, 64, 64, requires_grad=True)
    out = call(loss, logits, target)
    assert out["lossnet"].item() > 0 and not out["lossnet"].requires_grad
    parts = out["wbce"] + out["wiou"] + 0.1 * out["lossnet"]
    assert out["loss"].item() == pytest.approx(parts.item(), rel=1e-6)
    out["loss"].backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in lossnet.parameters())

    module = SegmentationModule(torch.nn.Conv2d(3, 1, 1), loss, cfg=None)
    vgg = {name for name, _ in module.named_parameters() if ".vgg." in name}
    assert len(vgg) == 20  # registered (so it moves with the module): 10 convolutions
    state = module.state_dict()
    assert set(state) == {"model.weight", "model.bias"}
    module.load_state_dict(state)  # strict: the VGG is not expected back
