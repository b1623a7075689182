"""LossNet (M2SNet paper, Eqs. 5–6): L_f = Σ_i l_f^i, the "L2 loss" between frozen ImageNet
VGG-16 features F_P^i of the prediction and F_G^i of the ground truth at relu1_2, relu2_2,
relu3_3 and relu4_3, taken here as mean((F_P^i − F_G^i)²).

Both maps (probabilities in [0, 1]) are resized to 224×224 (bilinear), repeated to three
channels and ImageNet-normalised (``docs/decisions.md``). The VGG is a fixed measuring
instrument: never trained, always in eval mode, run in float32, and left out of state dicts
(checkpoints would otherwise carry 30 MB of VGG weights that are rebuilt from their source at
every start). With K classes the structure loss gives it each foreground class's softmax map
and one-hot map in turn (``structure.lossnet_maps``): L_f is their mean.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from condseg.errors import WeightsUnavailableError, first_line
from condseg.models.pretrained import host_reachable, read_state_dict

#: ``torchvision.models.vgg16().features`` slices ending at relu1_2, relu2_2, relu3_3, relu4_3.
BLOCKS = ((0, 4), (4, 9), (9, 16), (16, 23))
INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_WEIGHTS = torchvision.models.VGG16_Weights.IMAGENET1K_V1
# Keys relative to the stage: training names the stage (stages.<stage>.loss.options...).
_WEIGHTS_KEY = "loss.options.lossnet_weights"
_OFF = "loss.options.lossnet=false"


class LossNet(nn.Module):
    """``lossnet(prob, target)`` → L_f (a float32 scalar; gradient flows to ``prob`` only).

    ``weights``: a local VGG-16 file in torchvision's key names (``features.0.weight``, ...;
    safetensors or a plain torch state dict); ``None`` takes torchvision's ImageNet weights from
    its cache or download, and refuses at once when neither is possible.
    """

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        features = _vgg16_features(weights)
        self.vgg = nn.ModuleList(features[start:end] for start, end in BLOCKS)
        self.vgg.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        self.register_state_dict_post_hook(_drop_vgg)
        self.register_load_state_dict_pre_hook(_keep_vgg)
        self.vgg.eval()

    def train(self, mode: bool = True) -> LossNet:
        """The VGG stays in eval mode whatever the mode of the loss around it."""
        super().train(mode)
        self.vgg.eval()
        return self

    def forward(self, prob: Tensor, target: Tensor) -> Tensor:
        # float32 whatever the autocast around it ("meta", where a step's FLOPs are counted,
        # has no autocast to turn off)
        off = prob.device.type != "meta"
        with torch.autocast(prob.device.type if off else "cpu", enabled=False):
            predicted = self._features(prob)
            with torch.no_grad():
                truth = self._features(target)
            return sum(F.mse_loss(p, t) for p, t in zip(predicted, truth, strict=True))

    def _features(self, x: Tensor) -> list[Tensor]:
        x = F.interpolate(x.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                          align_corners=False)
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        out = []
        for block in self.vgg:
            x = block(x)
            out.append(x)
        return out


def _drop_vgg(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "vgg.")]:
        del state_dict[key]


def _keep_vgg(module: LossNet, state_dict: dict, prefix: str, *args: Any) -> None:
    """A state dict without the VGG (every one we write) loads strictly: the VGG keeps its own."""
    for key, value in module.vgg.state_dict(prefix=prefix + "vgg.").items():
        state_dict.setdefault(key, value)


def _vgg16_features(weights: str | Path | None) -> nn.Sequential:
    """torchvision's ``vgg16().features[:23]`` (up to relu4_3) with ImageNet weights."""
    with torch.device("meta"):  # the layout only: no memory, no random initialisation
        features = torchvision.models.vgg16(weights=None).features[:BLOCKS[-1][1]]
    if weights is None:
        source, state = _WEIGHTS.url, _torchvision_weights()
    else:
        source, state = str(weights), read_state_dict(weights, _WEIGHTS_KEY)
    state = {k.removeprefix("features."): v for k, v in state.items()
             if k.startswith("features.")}
    layout = features.state_dict()
    wrong = [f"features.{k}" for k, v in layout.items()
             if k not in state or state[k].shape != v.shape]
    if wrong:
        raise WeightsUnavailableError(
            f"{source} lacks VGG-16 feature weights of the right shapes ({', '.join(wrong[:4])}"
            f"{', ...' if len(wrong) > 4 else ''}); pass a VGG-16 state dict in torchvision's "
            f"key names with {_WEIGHTS_KEY}=PATH"
        )
    features.load_state_dict({k: state[k].float() for k in layout}, assign=True)
    return features


def _torchvision_weights() -> dict[str, Tensor]:
    """torchvision's file from its cache, or downloaded when its host answers."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_WEIGHTS.url)
    try:
        if not cached.is_file() and not host_reachable(_WEIGHTS.url):
            raise OSError(f"{_WEIGHTS.url} cannot be reached and is not in {cached.parent}")
        return _WEIGHTS.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as error:  # network, hash and file errors of every kind
        raise WeightsUnavailableError(
            f"LossNet needs ImageNet VGG-16 weights ({type(error).__name__}: "
            f"{first_line(error)}). Where "
            f"there is no network, download {_WEIGHTS.url} elsewhere and pass it with "
            f"{_WEIGHTS_KEY}=PATH, or train without LossNet with {_OFF}",
            what="LossNet's ImageNet VGG-16 weights", without=_OFF,
        ) from error
