"""ConDSeg losses against values computed by hand with plain `math` (DESIGN.md §4)."""

from __future__ import annotations

import math

import pytest
import torch

from condseg.errors import LossError
from condseg.losses import create_loss, mask_loss
from condseg.methods.condseg.losses import consistency_loss, stage1_loss, stage2_loss
from condseg.models.base import ModelOutput

# One 2x2 image, pixels in row-major order. ln 3 makes sigmoid exact: sigmoid(ln 3) = 3/4.
Z = [0.0, math.log(3), -math.log(3), 2.0]
Y = [1.0, 1.0, 0.0, 0.0]


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def bce(zs: list[float], ys: list[float]) -> float:
    """Eq. 2 on probabilities, written out: −mean(y·log p + (1−y)·log(1−p))."""
    ps = [sig(z) for z in zs]
    return -sum(
        y * math.log(p) + (1 - y) * math.log(1 - p) for p, y in zip(ps, ys, strict=True)
    ) / len(ps)


def dice(zs: list[float], ys: list[float]) -> float:
    """Dice loss with smoothing 1: 1 − (2ΣMY + 1)/(ΣM + ΣY + 1)."""
    ps = [sig(z) for z in zs]
    return 1 - (2 * sum(p * y for p, y in zip(ps, ys, strict=True)) + 1) / (sum(ps) + sum(ys) + 1)


def t(values: list[float], requires_grad: bool = False) -> torch.Tensor:
    """A (1,1,2,2) float32 tensor from four values; several lists give a batch."""
    return (
        torch.tensor(values, dtype=torch.float32).reshape(1, 1, 2, 2).requires_grad_(requires_grad)
    )


def tb(*images: list[float]) -> torch.Tensor:
    return torch.cat([t(v) for v in images])


def out(mask: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, uc: torch.Tensor):
    return ModelOutput(mask, {"fg": fg, "bg": bg, "uc": uc})


def test_bce_and_dice_by_hand() -> None:
    # probabilities 1/2, 3/4, 1/4, sigmoid(2) = 0.880797
    # BCE = −(ln 1/2 + ln 3/4 + ln 3/4 + ln(1 − 0.880797)) / 4
    #     = (0.693147 + 2·0.287682 + 2.126928) / 4 = 0.848860
    expected_bce = (math.log(2) + 2 * math.log(4 / 3) + math.log(1 + math.exp(2))) / 4
    assert bce(Z, Y) == pytest.approx(expected_bce, rel=1e-12)
    # Dice: ΣMY = 1/2 + 3/4 = 5/4, ΣM = 1/2 + 3/4 + 1/4 + 0.880797 = 2.380797, ΣY = 2
    # 1 − (2·5/4 + 1)/(2.380797 + 2 + 1) = 1 − 3.5/5.380797 = 0.349539
    expected_dice = 1 - 3.5 / (1.5 + sig(2) + 2 + 1)
    assert dice(Z, Y) == pytest.approx(expected_dice, rel=1e-12)
    assert mask_loss(t(Z), t(Y)).item() == pytest.approx(expected_bce + expected_dice, rel=1e-6)
    assert mask_loss(t(Z), t(Y)).item() == pytest.approx(0.848860 + 0.349539, abs=1e-5)


def test_mask_loss_empty_mask() -> None:
    # Y = 0: ΣMY = 0, ΣY = 0 → Dice = 1 − 1/(ΣM + 1); BCE = −mean ln(1 − p)
    ys = [0.0] * 4
    sum_p = 0.5 + 0.75 + 0.25 + sig(2)
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.75) + math.log(1 - sig(2))) / 4
    expected += 1 - 1 / (sum_p + 1)
    assert mask_loss(t(Z), t(ys)).item() == pytest.approx(expected, rel=1e-6)
    # Perfectly empty prediction on an empty mask: BCE ≈ 0, Dice = 1 − 1/1 = 0.
    assert mask_loss(t([-30.0] * 4), t(ys)).item() == pytest.approx(0.0, abs=1e-6)


def test_mask_loss_all_foreground() -> None:
    # Y = 1: ΣMY = ΣM, ΣY = 4 → Dice = 1 − (2ΣM + 1)/(ΣM + 5); BCE = −mean ln p
    ys = [1.0] * 4
    sum_p = 0.5 + 0.75 + 0.25 + sig(2)
    expected = -(math.log(0.5) + math.log(0.75) + math.log(0.25) + math.log(sig(2))) / 4
    expected += 1 - (2 * sum_p + 1) / (sum_p + 5)
    assert mask_loss(t(Z), t(ys)).item() == pytest.approx(expected, rel=1e-6)


def test_mask_loss_is_stable_for_extreme_logits() -> None:
    # BCE from logits: a confident wrong pixel costs |z| instead of log(0) = inf.
    loss = mask_loss(t([200.0, -200.0, 0.0, 0.0]), t([0.0, 1.0, 0.0, 1.0]))
    # BCE = (200 + 200 + ln 2 + ln 2)/4; Dice: ΣMY = 1/2, ΣM = 2, ΣY = 2 → 1 − 2/5
    assert loss.item() == pytest.approx((400 + 2 * math.log(2)) / 4 + 0.6, rel=1e-6)


def test_per_image_mean_differs_from_pooled() -> None:
    # Image a: small lesion (1 px) missed; image b: large lesion (4 px) found.
    za, ya = [-30.0, -30.0, -30.0, -30.0], [1.0, 0.0, 0.0, 0.0]
    zb, yb = [30.0] * 4, [1.0] * 4
    # Dice per image: a = 1 − 1/(0 + 1 + 1) = 0.5; b = 1 − 9/9 = 0 → mean 0.25.
    # Pooled over both images: 1 − (2·4 + 1)/(4 + 5 + 1) = 0.1 — what pooling would give.
    # BCE per image: a = 30/4 (one pixel off by |z| = 30), b ≈ 0 → mean 3.75 (= pooled BCE).
    per_image = 0.5 * (bce(za, ya) + dice(za, ya) + bce(zb, yb) + dice(zb, yb))
    assert per_image == pytest.approx(3.75 + 0.25, abs=1e-6)
    got = mask_loss(tb(za, zb), tb(ya, yb)).item()
    assert got == pytest.approx(per_image, abs=1e-5)
    assert abs(got - (3.75 + 0.1)) > 0.1


def test_consistency_by_hand() -> None:
    z1 = [0.0, 1.0, -1.0, 3.0]  # probs .5 .73 .27 .95 → B(M1) = 1 1 0 1 (0.5 ≥ t counts)
    z2 = [-2.0, 2.0, 0.5, -0.5]  # probs .12 .88 .62 .38 → B(M2) = 0 1 1 0
    b1, b2 = [1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]
    expected = 0.5 * (bce(z1, b2) + bce(z2, b1))
    # bce(z1, b2) = (ln 2 + ln(1+e^-1) + ln(1+e^1) + ln(1+e^3))/4 = 1.471487
    assert bce(z1, b2) == pytest.approx(
        (math.log(2) + math.log1p(math.exp(-1)) + math.log1p(math.e) + math.log1p(math.exp(3))) / 4
    )
    assert consistency_loss(t(z1), t(z2)).item() == pytest.approx(expected, rel=1e-6)


def test_consistency_targets_carry_no_gradient() -> None:
    z1, z2 = [0.0, 1.0, -1.0, 3.0], [-2.0, 2.0, 0.5, -0.5]
    l1, l2 = t(z1, True), t(z2, True)
    consistency_loss(l1, l2).backward()
    # Only the BCE term of which l1 is the *prediction* contributes: d/dz ½·mean BCE(z, b2)
    # = ½·(σ(z) − b2)/4. A gradient through B(M1) would add to it (or fail to be finite).
    b1, b2 = [1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]
    expected1 = [0.5 * (sig(z) - b) / 4 for z, b in zip(z1, b2, strict=True)]
    expected2 = [0.5 * (sig(z) - b) / 4 for z, b in zip(z2, b1, strict=True)]
    assert l1.grad.flatten().tolist() == pytest.approx(expected1, abs=1e-7)
    assert l2.grad.flatten().tolist() == pytest.approx(expected2, abs=1e-7)


def test_stage1_loss_sums_its_parts() -> None:
    z1, z2 = [0.0, 1.0, -1.0, 3.0], [-2.0, 2.0, 0.5, -0.5]
    parts = stage1_loss(t(z1), t(z2), t(Y))
    m1, m2 = bce(z1, Y) + dice(z1, Y), bce(z2, Y) + dice(z2, Y)
    cons = 0.5 * (bce(z1, [0.0, 1.0, 1.0, 0.0]) + bce(z2, [1.0, 1.0, 0.0, 1.0]))
    assert parts["mask1"].item() == pytest.approx(m1, rel=1e-6)
    assert parts["mask2"].item() == pytest.approx(m2, rel=1e-6)
    assert parts["cons"].item() == pytest.approx(cons, rel=1e-6)
    assert parts["loss"].item() == pytest.approx(m1 + m2 + cons, rel=1e-6)
    assert set(parts) == {"loss", "mask1", "mask2", "cons"}


def test_stage2_loss_by_hand() -> None:
    zm, zf, zb, zu = Z, [1.0, 2.0, -1.0, -2.0], [-1.0, -2.0, 1.0, 2.0], [0.0, -3.0, -3.0, 0.0]
    ybg = [1 - y for y in Y]
    beta_fg = 1 / math.tanh(sum(sig(z) for z in zf) / 4)  # mean prob 0.5 → 1/tanh(0.5) = 2.16395
    beta_bg = 1 / math.tanh(sum(sig(z) for z in zb) / 4)
    assert beta_fg == pytest.approx(2.163953, abs=1e-6)
    pf, pb, pu = ([sig(z) for z in zs] for zs in (zf, zb, zu))
    compl = sum(f * b + f * u + b * u for f, b, u in zip(pf, pb, pu, strict=True)) / 4
    l_mask = bce(zm, Y) + dice(zm, Y)
    l_fg = bce(zf, Y) + dice(zf, Y)
    l_bg = bce(zb, ybg) + dice(zb, ybg)
    # fg and bg are mirror images (zb = −zf, target 1 − Y) so L_bg = L_fg.
    assert l_bg == pytest.approx(l_fg)
    parts = stage2_loss(out(t(zm), t(zf), t(zb), t(zu)), t(Y))
    expected = l_mask + beta_fg * l_fg + beta_bg * l_bg + compl
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert parts["mask"].item() == pytest.approx(l_mask, rel=1e-6)
    assert parts["fg"].item() == pytest.approx(l_fg, rel=1e-6)
    assert parts["bg"].item() == pytest.approx(l_bg, rel=1e-6)
    assert parts["compl"].item() == pytest.approx(compl, rel=1e-6)
    assert parts["beta_fg"].item() == pytest.approx(beta_fg, rel=1e-6)
    assert parts["beta_bg"].item() == pytest.approx(beta_bg, rel=1e-6)


def test_stage2_compl_by_hand() -> None:
    # All three maps at sigmoid(0) = 1/2: each product 1/4, three of them → L_compl = 3/4.
    half = t([0.0] * 4)
    assert stage2_loss(out(half, half, half, half), t(Y))["compl"].item() == pytest.approx(0.75)
    # Exactly one map on per pixel: complementary → L_compl ≈ 0.
    on, off = 30.0, -30.0
    f, b, u = t([on, off, off, off]), t([off, on, on, off]), t([off, off, off, on])
    assert stage2_loss(out(f, f, b, u), t(Y))["compl"].item() == pytest.approx(0.0, abs=1e-9)


def test_stage2_beta_clamped_for_empty_prediction() -> None:
    # All-zero fg prediction: mean prob ≈ 4e-44 → clamped to 0.01 → β1 = 1/tanh(0.01) = 100.0033.
    zero = t([-100.0] * 4)
    parts = stage2_loss(out(t(Z), zero, t(Z), t(Z)), t(Y))
    assert parts["beta_fg"].item() == pytest.approx(1 / math.tanh(0.01), rel=1e-6)
    assert parts["beta_fg"].item() == pytest.approx(100.00333, rel=1e-6)
    assert math.isfinite(parts["loss"].item())
    custom = stage2_loss(out(t(Z), zero, t(Z), t(Z)), t(Y), min_mean=0.1)
    assert custom["beta_fg"].item() == pytest.approx(1 / math.tanh(0.1), rel=1e-6)
    with pytest.raises(LossError, match=r"loss\.options\.min_mean must be > 0"):
        stage2_loss(out(t(Z), zero, t(Z), t(Z)), t(Y), min_mean=0.0)


def stage2_by_hand(zm, zf, zb, zu, ys) -> float:
    """Eq. 15 for one image, β from Eq. 9 with the 0.01 clamp."""
    ybg = [1 - y for y in ys]
    beta_fg = 1 / math.tanh(max(sum(sig(z) for z in zf) / 4, 0.01))
    beta_bg = 1 / math.tanh(max(sum(sig(z) for z in zb) / 4, 0.01))
    pf, pb, pu = ([sig(z) for z in zs] for zs in (zf, zb, zu))
    compl = sum(f * b + f * u + b * u for f, b, u in zip(pf, pb, pu, strict=True)) / 4
    return (
        bce(zm, ys)
        + dice(zm, ys)
        + beta_fg * (bce(zf, ys) + dice(zf, ys))
        + beta_bg * (bce(zb, ybg) + dice(zb, ybg))
        + compl
    )


def test_stage2_beta_weights_each_image_before_batch_mean() -> None:
    # Image a: lesion missed (small mean prob → β1 ≈ 8.4, large L_fg); image b: found (β1 ≈ 1.7).
    za = dict(zm=Z, zf=[-2.0, -2.0, -2.0, -2.0], zb=[-1.0, 1.0, 1.0, 1.0], zu=[-2.0] * 4)
    zb_ = dict(zm=Z, zf=[2.0, 2.0, 2.0, -2.0], zb=[-1.0, -1.0, -1.0, 1.0], zu=[-2.0] * 4)
    ya, yb = [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]
    expected = 0.5 * (stage2_by_hand(**za, ys=ya) + stage2_by_hand(**zb_, ys=yb))
    batch = out(*(tb(za[k], zb_[k]) for k in ("zm", "zf", "zb", "zu")))
    parts = stage2_loss(batch, tb(ya, yb))
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-6)
    # Weighting with the batch-mean β instead (what a pooled β would do) gives another value.
    beta = [1 / math.tanh(sum(sig(z) for z in d["zf"]) / 4) for d in (za, zb_)]
    l_fg = [bce(d["zf"], y) + dice(d["zf"], y) for d, y in ((za, ya), (zb_, yb))]
    per_image = 0.5 * (beta[0] * l_fg[0] + beta[1] * l_fg[1])
    pooled = 0.5 * (beta[0] + beta[1]) * 0.5 * (l_fg[0] + l_fg[1])
    assert abs(per_image - pooled) > 1.0
    assert parts["beta_fg"].item() == pytest.approx(0.5 * (beta[0] + beta[1]), rel=1e-6)


def test_stage2_beta_has_no_gradient() -> None:
    # ∂L/∂z_fg with β1 a constant, by hand: β1·[(σ−y)/4 + ∂Dice/∂p·p(1−p)] + (p_bg+p_uc)/4·p(1−p)
    # with ∂Dice/∂p_k = ((2I+1) − 2·y_k·D)/D², I = Σpy, D = Σp + Σy + 1.
    # A gradient through β1 = 1/tanh(mean p) would add L_fg·∂β1/∂z (large here: L_fg ≈ 1.2).
    zf, zb, zu = [1.0, -1.0, 0.5, -2.0], [0.0] * 4, [-1.0] * 4
    fg = t(zf, True)
    stage2_loss(out(t(Z), fg, t(zb), t(zu)), t(Y))["loss"].backward()
    p = [sig(z) for z in zf]
    beta = 1 / math.tanh(sum(p) / 4)
    inter, d = sum(pi * y for pi, y in zip(p, Y, strict=True)), sum(p) + sum(Y) + 1
    expected = [
        beta * ((pk - yk) / 4 + ((2 * inter + 1) - 2 * yk * d) / d**2 * pk * (1 - pk))
        + (sig(b) + sig(u)) / 4 * pk * (1 - pk)
        for pk, yk, b, u in zip(p, Y, zb, zu, strict=True)
    ]
    assert fg.grad.flatten().tolist() == pytest.approx(expected, abs=1e-6)


def test_losses_run_in_float32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    ref = mask_loss(logits, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mask_loss(logits.bfloat16(), target)
        parts = stage2_loss(out(*(logits.bfloat16(),) * 4), target)
    assert got.dtype == torch.float32
    assert parts["loss"].dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=1e-2)


def test_shape_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match=r"\(1, 1, 2, 2\) and \(1, 1, 4\)"):
        mask_loss(t(Z), torch.zeros(1, 1, 4))


def test_stage2_loss_without_sid_maps_is_the_mask_loss() -> None:
    """The Table-4 baseline returns no SID maps; only L_mask(Y, M) remains."""
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    parts = stage2_loss(ModelOutput(logits), target)
    assert set(parts) == {"loss", "mask"}
    torch.testing.assert_close(parts["loss"], mask_loss(logits, target))


def test_registered_losses_wrap_the_functions() -> None:
    """The losses a recipe names compute the same values as the functions, per view."""
    z1, z2 = t(Z), t(Z) * -0.5
    target = t(Y)
    cr = create_loss("condseg-cr")
    assert cr.views == ("strong",)
    got = cr({"image": ModelOutput(z1), "strong": ModelOutput(z2)}, target)
    torch.testing.assert_close(got["loss"], stage1_loss(z1, z2, target)["loss"])
    plain = create_loss("condseg-cr", consistency=False)
    assert plain.views == ()
    torch.testing.assert_close(plain({"image": ModelOutput(z1)}, target)["loss"],
                               mask_loss(z1, target))
    torch.testing.assert_close(create_loss("bce-dice")({"image": ModelOutput(z1)}, target)["loss"],
                               mask_loss(z1, target))
