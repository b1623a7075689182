"""Contrast-Driven Feature Aggregation (paper Eq. 11–14).

Each pixel gathers its K×K neighbourhood of value vectors; attention matrices (K²×K², per head)
predicted from the foreground and the background guidance features re-weight the window, and
the re-weighted windows are folded back (overlaps summed, Eq. 14).

``mode="official"`` is the authors' released order (fg weighting → fold → proj, then the same
on the result with bg and the same proj); ``mode="paper"`` is Eq. 13 as written (bg then fg
inside one window, one fold, one proj). ``guided=False`` keeps only the input/output CBR pairs
(the Table-4 baseline).

By default the aggregation runs in the form of :mod:`.window_aggregate` (no K×K window tensor,
attention computed in the maps' own layout); ``plain_kernels = True`` (see
:func:`condseg.models.base.use_plain_kernels`) runs the unfold/fold form below, the oracle the
tests compare against. Both use the same parameters.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from condseg.errors import ModelError
from condseg.methods.condseg.window_aggregate import compose_attention, window_aggregate
from condseg.models.blocks import CBR

CDFAMode = Literal["official", "paper"]


class CDFA(nn.Module):
    plain_kernels: bool = False

    def __init__(
        self,
        cin: int,
        dim: int = 128,
        heads: int = 4,
        kernel: int = 3,
        mode: CDFAMode = "official",
        guided: bool = True,
    ) -> None:
        super().__init__()
        if mode not in ("official", "paper"):
            raise ModelError(f"cdfa_mode must be 'official' or 'paper', got {mode!r}")
        if dim % heads:
            raise ModelError(f"CDFA width {dim} is not divisible by its {heads} heads")
        self.dim, self.heads, self.kernel, self.mode, self.guided = dim, heads, kernel, mode, guided
        self.scale = (dim // heads) ** -0.5
        self.inp = nn.Sequential(CBR(cin, dim, 3), CBR(dim, dim, 3))
        if guided:
            window = kernel * kernel
            self.value = nn.Linear(dim, dim)
            self.attn_fg = nn.Linear(dim, heads * window * window)
            self.attn_bg = nn.Linear(dim, heads * window * window)
            self.proj = nn.Linear(dim, dim)
        self.out = nn.Sequential(CBR(dim, dim, 3), CBR(dim, dim, 3))

    def forward(
        self, x: torch.Tensor, g_fg: torch.Tensor | None = None, g_bg: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.inp(x)
        if self.guided:
            x = self._aggregate(x, g_fg, g_bg)
        return self.out(x)

    def _aggregate(self, x: torch.Tensor, g_fg: torch.Tensor, g_bg: torch.Tensor) -> torch.Tensor:
        if self.plain_kernels or x.device.type != "cpu":  # the fast form is a CPU kernel
            return self._aggregate_plain(x, g_fg, g_bg)  # (on CUDA unfold/fold is faster)
        k = self.kernel
        a_fg = self.attention_maps(self.attn_fg, g_fg)
        a_bg = self.attention_maps(self.attn_bg, g_bg)
        v = _pixelwise_fast(self.value, x)
        if self.mode == "official":
            y = _pixelwise_fast(self.proj, window_aggregate(v, a_fg, k))
            return _pixelwise_fast(self.proj, window_aggregate(y, a_bg, k))
        return _pixelwise_fast(self.proj, window_aggregate(v, compose_attention(a_fg, a_bg), k))

    def attention_maps(self, linear: nn.Linear, guide: torch.Tensor) -> torch.Tensor:
        """:meth:`attention` laid out as maps: (B, heads, K², K², H, W), softmax over dim 3."""
        b, _, h, w = guide.shape
        window = self.kernel * self.kernel
        logits = _pixelwise_fast(linear, guide, self.scale)
        return logits.view(b, self.heads, window, window, h, w).softmax(dim=3)

    def _aggregate_plain(
        self, x: torch.Tensor, g_fg: torch.Tensor, g_bg: torch.Tensor
    ) -> torch.Tensor:
        a_fg, a_bg = self.attention(self.attn_fg, g_fg), self.attention(self.attn_bg, g_bg)
        v = _pixelwise(self.value, x)
        if self.mode == "official":
            y = _pixelwise(self.proj, self._fold(a_fg @ self._unfold(v), x.shape))
            return _pixelwise(self.proj, self._fold(a_bg @ self._unfold(y), x.shape))
        return _pixelwise(self.proj, self._fold(a_fg @ (a_bg @ self._unfold(v)), x.shape))

    def attention(self, linear: nn.Linear, guide: torch.Tensor) -> torch.Tensor:
        """Per-pixel, per-head softmax attention (B, heads, HW, K², K²) from a guidance map."""
        b, _, h, w = guide.shape
        window = self.kernel * self.kernel
        logits = linear(guide.flatten(2).transpose(1, 2))  # (B, HW, heads·K²·K²)
        logits = logits.reshape(b, h * w, self.heads, window, window).transpose(1, 2)
        return (logits * self.scale).softmax(dim=-1)

    def _unfold(self, v: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → windows (B, heads, HW, K², head_dim), channel order (c, position)."""
        b, c, h, w = v.shape
        window = self.kernel * self.kernel
        cols = F.unfold(v, self.kernel, padding=self.kernel // 2)  # (B, C·K², HW)
        cols = cols.reshape(b, self.heads, c // self.heads, window, h * w)
        return cols.permute(0, 1, 4, 3, 2)

    def _fold(self, windows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Inverse of :meth:`_unfold`, summing overlapping window contributions (Eq. 14)."""
        b, c, h, w = shape
        cols = windows.permute(0, 1, 4, 3, 2).reshape(b, c * self.kernel**2, h * w)
        return F.fold(cols, (h, w), self.kernel, padding=self.kernel // 2)


def _pixelwise_fast(linear: nn.Linear, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale · linear`` on every pixel of a (B, C, H, W) map as one matrix product in the
    map's own memory format (no permuted copy); the result has that format too."""
    weight, bias = linear.weight * scale, linear.bias * scale
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)
    b, c, h, w = x.shape
    out = torch.baddbmm(bias[None, :, None].expand(b, -1, h * w), weight.expand(b, -1, -1),
                        x.reshape(b, c, h * w))
    return out.view(b, -1, h, w)


def _pixelwise(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Apply a Linear layer to the channel vector of every pixel of a (B, C, H, W) map."""
    return linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
