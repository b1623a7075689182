"""U-Net, U-Net++ and DeepLabV3+ as segmentation_models_pytorch builds them, on a timm encoder.

One wrapper serves the three architectures: smp builds the network, condseg only fixes what its
contract needs (the logit maps of an RGB image: one, or one per class — smp's ``classes``) and
gets the ImageNet weights the way every condseg encoder does
(:func:`condseg.models.encoders.with_imagenet_weights`), since smp's timm-universal encoders
(``tu-<name>``) hand their extra arguments to ``timm.create_model``.
"""

from __future__ import annotations

import inspect
from functools import partial
from pathlib import Path
from typing import Any

import torch

from condseg.errors import ModelError
from condseg.models.base import ModelOutput, PluginSite, SegmentationModel, mask_channels
from condseg.models.encoders import encoder_sites, with_imagenet_weights
from condseg.models.registry import register_model

#: smp arguments the wrapper sets itself: the encoder and its weights, an RGB input, the classes,
#: logits at the input size and no classification head.
_FIXED = frozenset({"self", "encoder_name", "encoder_weights", "in_channels", "classes",
                    "activation", "upsampling", "aux_params"})


class SmpModel(SegmentationModel):
    """An smp network (``net``) on the timm encoder ``encoder``, returning mask logits.

    ``options`` are the smp class's own (``decoder_channels``, ``encoder_depth``,
    ``encoder_output_stride``, ...). Inputs must be multiples of the encoder's output stride:
    32 for U-Net and U-Net++, 16 for DeepLabV3+ (its last stage is dilated).
    """

    encoder_path = "net.encoder"

    def __init__(
        self,
        architecture: str,
        encoder: str = "resnet50",
        pretrained: bool = False,
        weights: str | Path | None = None,
        num_classes: int = 1,
        **options: Any,
    ) -> None:
        super().__init__()
        import segmentation_models_pytorch  # here, not at the top: importing condseg stays fast

        cls = getattr(segmentation_models_pytorch, architecture)
        _check_options(cls, options)

        def build(tag: str, pretrained: bool, **timm_kwargs: Any) -> torch.nn.Module:
            return cls(encoder_name=f"tu-{tag}", encoder_weights=True if pretrained else None,
                       classes=mask_channels(num_classes), **options, **timm_kwargs)

        self.net = with_imagenet_weights(build, encoder, pretrained, weights)
        self.input_divisor = self.net.encoder.output_stride
        self.num_classes = num_classes
        self.architecture = architecture

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(self.net(x))

    def encoder_config(self) -> dict[str, Any]:
        """The config is on the timm model inside smp's encoder wrapper, not on the wrapper."""
        return self.net.encoder.model.pretrained_cfg

    def plugin_sites(self) -> dict[str, PluginSite]:
        """The timm encoder's stages, then the decoder blocks: DeepLabV3+'s high-resolution
        projection and fusion block (not the ASPP neck), U-Net's upsampling blocks."""
        sites = encoder_sites(self.net.encoder.model, "net.encoder.model")
        decoder = self.net.decoder
        if self.architecture == "DeepLabV3Plus":
            blocks = {"block1": decoder.block1[1].num_features,
                      "block2": decoder.block2[1].num_features}
        elif self.architecture == "Unet":
            blocks = {f"blocks.{i}": block.conv2[0].out_channels
                      for i, block in enumerate(decoder.blocks)}
        else:
            blocks = {}
        for i, (path, channels) in enumerate(blocks.items(), start=1):
            sites[f"decoder{i}"] = PluginSite(f"net.decoder.{path}", channels)
        return sites


def _check_options(cls: type, options: dict[str, Any]) -> None:
    """Name a bad option here: unchecked, smp would pass it on to timm, whose TypeError would
    then read as a failure to load the ImageNet weights."""
    valid = [name for name, p in inspect.signature(cls.__init__).parameters.items()
             if name not in _FIXED and p.kind is not p.VAR_KEYWORD]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ModelError(f"unknown option(s) {', '.join(unknown)} for smp.{cls.__name__}; "
                         f"valid: encoder, num_classes, {', '.join(valid)}")


for _name, _architecture, _description in (
    ("unet", "Unet", "U-Net (smp), ResNet-50 encoder"),
    ("unetplusplus", "UnetPlusPlus", "U-Net++ (smp), ResNet-50 encoder"),
    ("deeplabv3plus", "DeepLabV3Plus", "DeepLabV3+ (smp), ResNet-50 encoder, output stride 16"),
):
    register_model(_name, partial(SmpModel, _architecture), description=_description,
                   defaults={"encoder": "resnet50"})
