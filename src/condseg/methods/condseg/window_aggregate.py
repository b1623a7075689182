"""The fast form of CDFA's window aggregation: fold(A @ unfold(V)) without K×K windows.

With d_i the offset of window position i and A_p the (K², K²) attention of pixel p, the fold
of the weighted windows is

    out[q] = Σ_i Σ_j A_{q−d_i}[i, j] · V[q − d_i + d_j]      (zero outside the image),

so with e = d_j − d_i, one of (2K−1)² offsets,

    out[q] = Σ_e W_e[q] · V[q + e],   W_e[q] = Σ_{(i, j): d_j − d_i = e} A_{q−d_i}[i, j].

W is a per-pixel, per-head weight of each offset — (2K−1)² small maps instead of K² copies of
every channel — and the aggregation is (2K−1)² shifted multiply-adds of V. The autograd
function saves only V and W, so training keeps no window tensor and no per-window product.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F


def window_aggregate(v: torch.Tensor, a: torch.Tensor, kernel: int) -> torch.Tensor:
    """fold(A @ unfold(V)): ``v`` (B, C, H, W) split into heads, ``a`` (B, heads, K², K², H, W)
    (row i = destination window position, column j = source); returns (B, C, H, W) in the
    memory format and dtype of ``v``."""
    return _WindowAggregate.apply(v, a, kernel)


def compose_attention(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Per-pixel matrix product ``outer @ inner`` of (B, heads, K², K², H, W) attention maps, so
    that ``window_aggregate(v, compose_attention(a, b))`` weights each window by b, then a.
    K² broadcast multiply-adds over whole maps: faster here than a batched product of 9×9s."""
    out = outer[:, :, :, 0, None] * inner[:, :, None, 0]
    for k in range(1, outer.shape[3]):
        out = out.addcmul_(outer[:, :, :, k, None], inner[:, :, None, k])
    return out


class _WindowAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: torch.Tensor, a: torch.Tensor, kernel: int) -> torch.Tensor:
        w = _offset_weights(a.to(torch.promote_types(a.dtype, torch.float32)), kernel)
        ctx.save_for_backward(v, w)
        ctx.kernel, ctx.a_dtype = kernel, a.dtype
        return _shifted_sum(v, w, kernel - 1).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        v, w = ctx.saved_tensors
        grad_v = _shifted_sum_transposed(grad, w, ctx.kernel - 1).to(v.dtype)
        grad_a = _offset_weights_transposed(_offset_products(grad, v, w, ctx.kernel - 1),
                                            ctx.kernel)
        return grad_v, grad_a.to(ctx.a_dtype), None


#: Elements of one tile of the shifted sums: the (2K−1)² passes over a tile run in cache.
_TILE = 1 << 18


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, heads, c // heads, h, w)


def _row_tiles(x: torch.Tensor) -> Iterator[slice]:
    """Blocks of rows of the (B, C, H, W) map ``x`` of about :data:`_TILE` elements each."""
    b, c, h, w = x.shape
    rows = max(1, _TILE // (b * c * w))
    for start in range(0, h, rows):
        yield slice(start, min(start + rows, h))


def _offsets(radius: int) -> Iterator[tuple[int, int, int]]:
    """(index e, row, column) of every offset in the (2·radius+1)² grid; row and column are
    where the offset's view of a map padded by ``radius`` starts."""
    n = 2 * radius + 1
    for ey in range(n):
        for ex in range(n):
            yield ey * n + ex, ey, ex


def _shifted(x: torch.Tensor, rows: slice, dy: int, dx: int, width: int) -> torch.Tensor:
    """Rows ``rows`` of the view of the padded map ``x`` shifted by (dy, dx)."""
    return x[..., rows.start + dy:rows.stop + dy, dx:dx + width]


def _shifted_sum(v: torch.Tensor, w: torch.Tensor, radius: int) -> torch.Tensor:
    """out[q] = Σ_e w_e[q] · v[q + e] for each head; ``v`` (B, C, H, W), ``w`` (B, heads, E,
    H, W). Accumulated in ``w``'s dtype, in the memory format of ``v``."""
    heads, width = w.shape[1], v.shape[-1]
    vp = _split_heads(F.pad(v, (radius,) * 4), heads)
    out = torch.zeros_like(v, dtype=w.dtype)  # in v's memory format
    acc = _split_heads(out, heads)
    for rows in _row_tiles(v):
        for e, dy, dx in _offsets(radius):
            acc[..., rows, :].addcmul_(w[:, :, e:e + 1, rows], _shifted(vp, rows, dy, dx, width))
    return out


def _shifted_sum_transposed(g: torch.Tensor, w: torch.Tensor, radius: int) -> torch.Tensor:
    """Adjoint of :func:`_shifted_sum` in v: grad_v[p] = Σ_e w_e[p − e] · g[p − e], evaluated
    from zero-padded copies of g and w so that each output tile is written once."""
    heads, width, n = w.shape[1], g.shape[-1], 2 * radius + 1
    gp = _split_heads(F.pad(g, (radius,) * 4), heads)
    wp = F.pad(w, (radius,) * 4)
    out = torch.zeros_like(g, dtype=w.dtype)
    acc = _split_heads(out, heads)
    for rows in _row_tiles(g):
        for e, dy, dx in _offsets(radius):
            sy, sx = n - 1 - dy, n - 1 - dx  # the shift by −e
            acc[..., rows, :].addcmul_(_shifted(wp[:, :, e:e + 1], rows, sy, sx, width),
                                       _shifted(gp, rows, sy, sx, width))
    return out


def _offset_products(
    g: torch.Tensor, v: torch.Tensor, w: torch.Tensor, radius: int
) -> torch.Tensor:
    """Gradient of :func:`_shifted_sum` in w: grad_w_e[q] = Σ_c g[c, q] · v[c, q + e]."""
    heads, width = w.shape[1], g.shape[-1]
    vp = _split_heads(F.pad(v, (radius,) * 4), heads)
    gh = _split_heads(g, heads)
    out = torch.empty_like(w)
    for rows in _row_tiles(g):
        for e, dy, dx in _offsets(radius):
            torch.sum(gh[..., rows, :] * _shifted(vp, rows, dy, dx, width), dim=2,
                      dtype=w.dtype, out=out[:, :, e, rows])
    return out


Index = tuple[object, ...]


def _window_blocks(kernel: int, h: int, w: int) -> Iterator[tuple[Index, Index]]:
    """For each destination position i = (iy, ix), with offset d_i = (iy − r, ix − r): the index
    into the (B, heads, 2K−1, 2K−1, H, W) offset weights of its K×K block of offsets
    e = d_j − d_i (starting at (K−1−iy, K−1−ix)) at the pixels q with q − d_i inside the image,
    and the index into the (B, heads, K, K, K, K, H, W) attention of its rows at those q − d_i."""
    r = kernel // 2
    for iy in range(kernel):
        for ix in range(kernel):
            dy, dx = iy - r, ix - r
            by, bx = kernel - 1 - iy, kernel - 1 - ix
            dst = (slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0)))
            src = (slice(max(-dy, 0), h - max(dy, 0)), slice(max(-dx, 0), w - max(dx, 0)))
            w_index = (..., slice(by, by + kernel), slice(bx, bx + kernel), *dst)
            a_index = (slice(None), slice(None), iy, ix, ..., *src)
            yield w_index, a_index


def _offset_weights(a: torch.Tensor, kernel: int) -> torch.Tensor:
    """(B, heads, K², K², H, W) attention → (B, heads, (2K−1)², H, W) offset weights W_e: each
    destination position i adds its row A[i, :] at pixel q − d_i to its block of offsets."""
    b, heads, _, _, h, w = a.shape
    n = 2 * kernel - 1
    out = a.new_zeros(b, heads, n, n, h, w)
    a = a.view(b, heads, kernel, kernel, kernel, kernel, h, w)
    for w_index, a_index in _window_blocks(kernel, h, w):
        out[w_index] += a[a_index]
    return out.view(b, heads, n * n, h, w)


def _offset_weights_transposed(grad_w: torch.Tensor, kernel: int) -> torch.Tensor:
    """Adjoint of :func:`_offset_weights`: grad_a[i, j][p] = grad_w[d_j − d_i][p + d_i]."""
    b, heads, _, h, w = grad_w.shape
    n = 2 * kernel - 1
    grad_w = grad_w.view(b, heads, n, n, h, w)
    out = grad_w.new_zeros(b, heads, kernel, kernel, kernel, kernel, h, w)
    for w_index, a_index in _window_blocks(kernel, h, w):
        out[a_index] = grad_w[w_index]
    return out.view(b, heads, kernel * kernel, kernel * kernel, h, w)
