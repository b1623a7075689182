"""The fast CDFA (shifted sums, no K×K windows) against the plain unfold/fold oracle."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from condseg.methods.condseg import window_aggregate as wa
from condseg.methods.condseg.cdfa import CDFA
from condseg.models.base import use_plain_kernels
from condseg.models.registry import create_model


def _fold_of_windows(v: torch.Tensor, a: torch.Tensor, k: int) -> torch.Tensor:
    """fold(A @ unfold(V)) written out with torch's unfold/fold; ``a`` (B, heads, K², K², H, W)."""
    b, c, h, w = v.shape
    heads = a.shape[1]
    cols = F.unfold(v, k, padding=k // 2).view(b, heads, c // heads, k * k, h * w)
    y = torch.einsum("bhijp,bhcjp->bhcip", a.flatten(-2), cols)
    return F.fold(y.reshape(b, c * k * k, h * w), (h, w), k, padding=k // 2)


def _map(shape: tuple[int, ...], channels_last: bool, dtype=torch.float32) -> torch.Tensor:
    x = torch.randn(shape, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("shape", "kernel", "tile"), [
    ((2, 6, 7, 5), 3, 40),        # one row per tile
    ((1, 4, 1, 3), 3, wa._TILE),  # map smaller than the window
    ((2, 4, 6, 6), 5, 100),       # K = 5: 81 offsets
])
def test_window_aggregate_is_the_fold_of_weighted_windows(
    monkeypatch: pytest.MonkeyPatch, channels_last: bool, shape: tuple[int, ...], kernel: int,
    tile: int,
) -> None:
    monkeypatch.setattr(wa, "_TILE", tile)
    torch.manual_seed(0)
    b, _, h, w = shape
    v = _map(shape, channels_last, torch.float64).requires_grad_()
    a = torch.randn(b, 2, kernel**2, kernel**2, h, w, dtype=torch.float64).requires_grad_()
    ours, ref = wa.window_aggregate(v, a, kernel), _fold_of_windows(v, a, kernel)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert ours.is_contiguous(memory_format=torch.channels_last) == channels_last
    grad = torch.randn_like(ref)
    for g_ours, g_ref in zip(torch.autograd.grad(ours, (v, a), grad),
                             torch.autograd.grad(ref, (v, a), grad), strict=True):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)


def _outputs_and_grads(
    cdfa: CDFA, inputs: list[torch.Tensor], part: str = "forward"
) -> list[torch.Tensor]:
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    cdfa.zero_grad()
    out = getattr(cdfa, part)(*inputs)
    weights = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out * weights).sum().backward()
    used = [p.grad.clone() for p in cdfa.parameters() if p.grad is not None]
    return [out] + [t.grad for t in inputs] + used


def _assert_each_close(ours: list[torch.Tensor], ref: list[torch.Tensor], tol: float) -> None:
    """Each tensor within ``tol`` of the reference, relative to the reference's largest value."""
    for x, y in zip(ours, ref, strict=True):
        torch.testing.assert_close(x.float(), y.float(), rtol=0,
                                   atol=tol * max(y.abs().max().item(), 1.0))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("guided", [True, False])
@pytest.mark.parametrize("mode", ["official", "paper"])
def test_fast_cdfa_equals_plain(mode: str, guided: bool, channels_last: bool) -> None:
    torch.manual_seed(0)
    cdfa = CDFA(cin=12, dim=16, heads=4, mode=mode, guided=guided).train()
    inputs = [_map((2, 12, 9, 7), channels_last)] + [_map((2, 16, 9, 7), channels_last)] * 2
    if not guided:
        inputs = inputs[:1]
    fast = _outputs_and_grads(cdfa, inputs)
    use_plain_kernels(cdfa, True)
    plain = _outputs_and_grads(cdfa, inputs)
    _assert_each_close(fast, plain, 1e-5)
    assert fast[0].is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_fast_cdfa_under_bf16_autocast(mode: str) -> None:
    """The aggregation under bf16 autocast (8-bit mantissa) stays within 3e-2 of float32,
    relative to each tensor's largest value (measured: ~1.4e-2, as for the plain path)."""
    torch.manual_seed(0)
    cdfa = CDFA(cin=16, dim=16, heads=4, mode=mode).train()
    inputs = [_map((2, 16, 8, 8), True) for _ in range(3)]
    reference = _outputs_and_grads(cdfa, inputs, "_aggregate")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _outputs_and_grads(cdfa, inputs, "_aggregate")
        assert ours[0].dtype == torch.bfloat16
        cdfa(*inputs).float().sum().backward()  # the whole module runs forward and backward
    _assert_each_close(ours, reference, 3e-2)


@pytest.fixture(scope="module")
def fast_and_plain() -> tuple[torch.nn.Module, torch.nn.Module]:
    """A narrow ConDSeg on the default path and a copy switched to the plain path."""
    torch.manual_seed(0)
    fast = create_model("condseg", encoder="resnet18", width=16)
    plain = copy.deepcopy(fast)
    use_plain_kernels(plain, True)
    assert plain.plain_kernels and all(m.plain_kernels for m in plain.cdfas)
    return fast, plain


def test_condseg_fast_path_equals_plain_path(fast_and_plain) -> None:
    fast_net, plain_net = (copy.deepcopy(net).eval() for net in fast_and_plain)
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        fast, plain = fast_net(x), plain_net(x)
    for ours, ref in zip([fast.mask, *fast.aux.values()], [plain.mask, *plain.aux.values()],
                         strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def _training_step(net: torch.nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
    out = net(x)
    loss = out.mask.square().mean() + sum(m.sigmoid().mean() for m in out.aux.values())
    loss.backward()
    return [out.mask.detach()] + [p.grad for p in net.parameters()], dict(net.named_buffers())


@pytest.mark.slow
def test_recomputation_changes_nothing(fast_and_plain) -> None:
    """The default training step recomputes activations in backward: outputs, gradients and
    BatchNorm statistics (updated once, not again on the rerun) equal those of a step that
    keeps them, with the same CDFA kernels."""
    recomputing, keeping = (copy.deepcopy(fast_and_plain[0]).train() for _ in range(2))
    use_plain_kernels(keeping, True)
    use_plain_kernels(keeping.cdfas, False)
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    ours, our_buffers = _training_step(recomputing, x)
    ref, ref_buffers = _training_step(keeping, x)
    _assert_each_close(ours, ref, 1e-6)
    for name, buffer in ref_buffers.items():
        torch.testing.assert_close(our_buffers[name], buffer, rtol=0, atol=1e-6, msg=name)
