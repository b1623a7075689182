"""Model options, the registry, the loop-based CDFA oracle, and the checkpoint importer."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from condseg.convert import load_official, rename_key
from condseg.errors import CondsegError, ConversionError
from condseg.methods.condseg.cdfa import CDFA
from condseg.models.base import ModelOutput
from condseg.models.registry import create_model, list_models


def _window_attention_loop(
    v: torch.Tensor, attentions: list[torch.Tensor], heads: int, k: int
) -> torch.Tensor:
    """Eq. 11–14 evaluated pixel by pixel: window (Eq. 11), weightings applied innermost first
    (Eq. 13), then the sum over the windows that contain each pixel (Eq. 14).

    ``v``: (C, H, W); each attention: (heads, H·W, K², K²) softmaxed.
    """
    c, h, w = v.shape
    hd, r = c // heads, k // 2
    out = torch.zeros_like(v)
    for i, j in itertools.product(range(h), range(w)):
        for head in range(heads):
            window = torch.zeros(k * k, hd)
            for p, q in itertools.product(range(k), range(k)):
                y, x = i + p - r, j + q - r
                if 0 <= y < h and 0 <= x < w:
                    window[p * k + q] = v[head * hd:(head + 1) * hd, y, x]
            for attention in attentions:
                window = attention[head, i * w + j] @ window
            for p, q in itertools.product(range(k), range(k)):
                y, x = i + p - r, j + q - r
                if 0 <= y < h and 0 <= x < w:
                    out[head * hd:(head + 1) * hd, y, x] += window[p * k + q]
    return out


def _linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("oc,chw->ohw", layer.weight, x) + layer.bias[:, None, None]


@pytest.mark.parametrize("mode", ["paper", "official"])
def test_cdfa_matches_loop_evaluation_of_equations(mode: str) -> None:
    torch.manual_seed(0)
    cdfa = CDFA(cin=8, dim=8, heads=2, kernel=3, mode=mode).eval()
    x, g_fg, g_bg = (torch.randn(1, 8, 5, 4) for _ in range(3))
    a_fg, a_bg = cdfa.attention(cdfa.attn_fg, g_fg)[0], cdfa.attention(cdfa.attn_bg, g_bg)[0]
    assert a_fg.shape == (2, 20, 9, 9)
    torch.testing.assert_close(a_fg.sum(-1), torch.ones(2, 20, 9, 9)[..., 0])
    with torch.no_grad():
        ours = cdfa._aggregate(x, g_fg, g_bg)[0]
        v = _linear(cdfa.value, x[0])
        if mode == "paper":  # Softmax(A_fg) ⊗ (Softmax(A_bg) ⊗ V), one fold, one proj
            expected = _linear(cdfa.proj, _window_attention_loop(v, [a_bg, a_fg], 2, 3))
        else:  # the authors' code: fg, fold, proj; then bg, fold, the same proj
            y = _linear(cdfa.proj, _window_attention_loop(v, [a_fg], 2, 3))
            expected = _linear(cdfa.proj, _window_attention_loop(y, [a_bg], 2, 3))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_cdfa_modes_differ() -> None:
    torch.manual_seed(0)
    official = CDFA(8, 8, heads=2, mode="official").eval()
    paper = CDFA(8, 8, heads=2, mode="paper").eval()
    paper.load_state_dict(official.state_dict())
    x, g = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        assert not torch.allclose(official(x, g, -g), paper(x, g, -g))


def test_registry_lists_and_rejects() -> None:
    assert {"condseg", "condseg-pvt", "condseg-net0"} <= set(list_models())
    with pytest.raises(CondsegError, match=r"unknown model 'nope'.*condseg"):
        create_model("nope")
    with pytest.raises(CondsegError, match="bad option"):
        create_model("condseg", colour="red")
    with pytest.raises(CondsegError, match="cdfa_mode"):
        create_model("condseg", cdfa_mode="other", width=16, encoder="resnet18")


@pytest.mark.parametrize(
    ("variant", "has_maps"), [("full", True), ("sid_cdfa", True), ("baseline", False)]
)
def test_variants_narrow_models_and_encoders(variant: str, has_maps: bool) -> None:
    net = create_model("condseg", encoder="resnet18", width=32, variant=variant).eval()
    assert net.arch == {"name": "condseg", "options": {"encoder": "resnet18", "width": 32,
                                                     "variant": variant}}
    assert net.input_divisor == 16
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 96))
    assert isinstance(out, ModelOutput)
    assert out.mask.shape == (2, 1, 64, 96)
    if has_maps:
        assert net.map_names == ("fg", "bg", "uc") == tuple(out.aux)
        assert all(m.shape == (2, 1, 64, 96) for m in out.aux.values())
    else:
        assert net.map_names == () and dict(out.aux) == {}
        assert not hasattr(net, "sid")


def test_ablation_variants_are_smaller() -> None:
    sizes = {
        v: sum(p.numel() for p in create_model("condseg", variant=v).parameters())
        for v in ("baseline", "sid_cdfa", "full")
    }
    assert sizes["baseline"] < sizes["sid_cdfa"] < sizes["full"] == 45_552_786


def test_net0_shares_the_encoder_layout_with_condseg() -> None:
    net0, full = create_model("condseg-net0"), create_model("condseg")
    a, b = net0.encoder.state_dict(), full.encoder.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape for k in a)
    assert any(k.endswith("running_mean") for k in a)  # BatchNorm buffers move too


def test_rename_rules() -> None:
    assert rename_key("layer0.0.weight") == "encoder.conv1.weight"
    assert rename_key("layer1.1.2.bn3.bias") == "encoder.layer1.2.bn3.bias"
    assert rename_key("dconv2.c3.0.conv.1.running_var") == "fems.1.branches.2.0.1.running_var"
    assert rename_key("preprocess_bg1.preprocess.conv_2.conv.0.weight") == "guides_bg.0.6.0.weight"
    assert rename_key("decoder_middle.c4.conv.1.weight") == "decoder.middle.conv3.1.weight"
    assert rename_key("output_block.c3.bias") == "head.classifier.bias"
    assert rename_key("head.conv_fuse.weight") == "classifier.weight"


def test_load_official_round_trip(tmp_path) -> None:
    """An authors'-format state dict of Net_0 written to .pth comes back as our model."""
    ours = create_model("condseg-net0").eval()
    inverse = {}
    for i in range(4):
        for k, v in ours.sides[i].state_dict().items():
            inverse[f"head.conv{i + 1}.conv.{k}"] = v
    inverse["head.conv_fuse.weight"] = ours.classifier.weight.detach()
    enc = ours.encoder.state_dict()
    for k, v in enc.items():
        k = k.replace("conv1.", "layer0.0.", 1) if k.startswith("conv1.") else k
        k = k.replace("bn1.", "layer0.1.", 1) if k.startswith("bn1.") else k
        k = k.replace("layer1.", "layer1.1.", 1) if k.startswith("layer1.") else k
        inverse[k] = v
    path = tmp_path / "net0.pth"
    torch.save(inverse, path)
    loaded = load_official(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours(x))


def test_load_official_rejects_other_files(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ConversionError, match="not a checkpoint of the authors"):
        load_official(path)
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(ConversionError, match=r"junk\.pth"):
        load_official(tmp_path / "junk.pth")


def test_bilinear_upsampling_is_align_corners() -> None:
    from condseg.models.blocks import upsample

    x = torch.arange(4.0).view(1, 1, 2, 2)
    expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    torch.testing.assert_close(upsample(x, 2), expected)


def test_encoder_weights_from_a_local_file(tmp_path) -> None:
    """ImageNet weights without a network: a local file in timm's key names is loaded."""
    import timm
    from safetensors.torch import save_file

    from condseg.models.encoders import create_encoder

    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.safetensors"
    save_file(reference.state_dict(), str(path))
    encoder = create_encoder("resnet18", weights=path)
    torch.testing.assert_close(encoder.state_dict()["conv1.weight"], reference.conv1.weight)
    torch.testing.assert_close(encoder.state_dict()["layer3.1.bn2.running_var"],
                               reference.layer3[1].bn2.running_var)


def test_encoder_weights_unavailable_is_a_clear_error(tmp_path, monkeypatch) -> None:
    import timm

    from condseg.models import encoders

    with pytest.raises(encoders.WeightsUnavailableError, match=r"not found: .*missing\.pth"):
        encoders.create_encoder("resnet18", weights=tmp_path / "missing.pth")

    def offline(*args, pretrained: bool = False, **kwargs):
        if pretrained:
            raise OSError("no network")
        return timm.create_model(*args, **kwargs)

    monkeypatch.setattr(encoders.timm, "create_model", offline)
    with pytest.raises(encoders.WeightsUnavailableError, match=r"model\.weights=PATH"):
        create_model("condseg-net0", encoder="resnet18", pretrained=True)


def test_unreachable_hub_means_cache_only_not_a_minute_of_retries(monkeypatch) -> None:
    """Offline, the hub client is put in its cache-only mode for the call, so a missing
    download fails at once with our message instead of retrying for about a minute."""
    import socket

    from huggingface_hub import constants

    from condseg.errors import WeightsUnavailableError
    from condseg.models.encoders import with_imagenet_weights

    def unreachable(*args, **kwargs):
        raise OSError("no route")

    seen = []

    def factory(tag, pretrained, **kwargs):
        seen.append(constants.HF_HUB_OFFLINE)
        raise RuntimeError("not in the local cache")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    before = constants.HF_HUB_OFFLINE
    with pytest.raises(WeightsUnavailableError, match=r"model\.weights=PATH"):
        with_imagenet_weights(factory, "resnet18", pretrained=True)
    assert seen == [True] and before == constants.HF_HUB_OFFLINE
