"""M2SNet as an nnU-Net ``2d`` network (the M2SNet paper's Table 7 trains it inside nnU-Net).

condseg's ``m2snet`` takes a (B, 3, H, W) image with H, W multiples of 32 and gives K logit
maps; nnU-Net hands it patches of its plan's size with its dataset's channels, normalised by
its own scheme. So the adapter maps the C input channels to 3 with a learned 1×1 convolution
(none when C = 3), pads the patch to a multiple of 32 (reflecting its border) and crops the
logits back, and returns the plain logits tensor nnU-Net's loss and predictor expect.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from condseg.models.registry import create_model


class M2SNetForNNUNet(nn.Module):
    """``m2snet`` (random initialisation) for ``channels`` inputs and ``classes`` outputs."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.to_rgb = nn.Identity() if channels == 3 else nn.Conv2d(channels, 3, 1)
        self.net = create_model("m2snet", num_classes=classes)
        self.divisor = self.net.input_divisor

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.divisor, -width % self.divisor
        x = self.to_rgb(x)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if min(height, width) > max(
                pad_h, pad_w) else "replicate")
        return self.net(x).mask[..., :height, :width]
