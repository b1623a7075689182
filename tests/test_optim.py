"""Learning-rate schedules, parameter groups and the multi-scale batch hook."""

from __future__ import annotations

import pytest
import torch

from condseg.config import OptimizerConfig, ScheduleConfig, load_config
from condseg.errors import ConfigError
from condseg.models.registry import create_model
from condseg.training.hooks import BatchHook, MultiScale, as_trained
from condseg.training.optim import build_optimizer, build_scheduler, lr_factor


def factors(name: str, epochs: int, **options: object) -> list[float]:
    cfg = ScheduleConfig(name=name, **options)
    return [lr_factor(cfg, epochs, e) for e in range(epochs)]


def test_triangular_warms_up_to_mid_training_then_decays() -> None:
    # 1 − |2(e+1)/(E+1) − 1| for E = 5: 1/3, 2/3, 1, 2/3, 1/3.
    assert factors("triangular", 5) == pytest.approx([1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
    assert factors("triangular", 50)[0] == pytest.approx(2 / 51)


def test_triangular_learning_rates_at_chosen_epochs() -> None:
    """The optimiser's rates through 50 epochs of M2SNet's recipe (encoder 0.005, rest 0.05)
    equal lr·(1 − |2(e+1)/(E+1) − 1|); the peak 50/51 falls on epochs 24 and 25."""
    model = create_model("condseg-net0", encoder="resnet18")
    cfg = OptimizerConfig(name="sgd", lr=0.05, encoder_lr=0.005, nesterov=True)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="triangular"), 50)["scheduler"]
    seen = {}
    for epoch in range(50):
        seen[epoch] = [g["lr"] for g in optimizer.param_groups]
        optimizer.step()
        scheduler.step()
    for epoch, factor in {0: 2 / 51, 9: 20 / 51, 24: 50 / 51, 25: 50 / 51, 40: 20 / 51,
                          49: 2 / 51}.items():
        assert factor == pytest.approx(1 - abs(2 * (epoch + 1) / 51 - 1))
        assert seen[epoch] == pytest.approx([0.005 * factor, 0.05 * factor])


def test_poly_cosine_constant_and_warm_up() -> None:
    assert factors("poly", 4, power=1.0) == pytest.approx([1, 0.75, 0.5, 0.25])
    assert factors("cosine", 3) == pytest.approx([1, 0.75, 0.25])
    assert factors("cosine", 3, min_lr_ratio=0.5) == pytest.approx([1, 0.875, 0.625])
    # Two warm-up epochs (1/3, 2/3), then poly over the remaining three.
    assert factors("poly", 5, power=1.0, warmup_epochs=2) == pytest.approx(
        [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
    assert factors("constant", 3, warmup_epochs=1) == pytest.approx([0.5, 1, 1])


def test_optimizer_groups_and_the_scheduler_they_drive() -> None:
    model = create_model("condseg-net0", encoder="resnet18")
    cfg = OptimizerConfig(name="sgd", lr=0.05, encoder_lr=0.005, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.SGD)
    assert [(g["name"], g["lr"], g["nesterov"]) for g in optimizer.param_groups] == [
        ("encoder", 0.005, True), ("rest", 0.05, True)]
    entry = build_scheduler(optimizer, ScheduleConfig(name="triangular"), max_epochs=3)
    assert entry["interval"] == "epoch"
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0025, 0.025])
    optimizer.step()  # no gradients: a no-op that keeps the step order torch expects
    entry["scheduler"].step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.005, 0.05])
    plateau = build_scheduler(optimizer, ScheduleConfig(name="plateau", monitor="val/miou"), 3)
    assert plateau["monitor"] == "val/miou" and plateau["scheduler"].mode == "max"
    adamw = build_optimizer(model, OptimizerConfig(name="adamw", lr=1e-3))
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["lr"] for g in adamw.param_groups] == [1e-3, 1e-3]


def test_multiscale_resizes_images_views_and_masks_together() -> None:
    torch.manual_seed(0)
    hook = MultiScale([16, 24, 32])
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    batch = {"image": torch.randn(2, 3, 32, 32), "strong": torch.randn(2, 3, 32, 32),
             "mask": mask, "name": ["a", "b"]}
    seen = set()
    for _ in range(30):
        out = hook(batch)
        size = out["image"].shape[-1]
        seen.add(size)
        assert size in (16, 24, 32)
        assert out["image"].shape == (2, 3, size, size) == out["strong"].shape
        assert out["mask"].shape == (2, 1, size, size)
        assert set(out["mask"].unique().tolist()) == {0.0, 1.0}
        assert out["mask"].mean().item() == pytest.approx(0.25, abs=0.05)
        assert out["name"] == ["a", "b"]
    assert seen == {16, 24, 32}


def test_multiscale_sizes_are_uniform_and_masks_stay_aligned() -> None:
    """Over many batches every size comes from the set, each about equally often (the authors
    draw uniformly); the mask is resized exactly as the image and stays binary."""
    torch.manual_seed(1)
    sizes = [28, 32, 36, 40, 44]  # the authors' 224..352 in steps of 32, divided by 8
    hook = MultiScale(sizes)
    mask = torch.zeros(2, 1, 44, 44)
    mask[0, :, 5:25, 12:37] = 1
    mask[1, :, 37:41, 1:5] = 1  # a small object near the border
    image = mask.expand(-1, 3, -1, -1).clone()  # the image shows the mask
    counts = dict.fromkeys(sizes, 0)
    for _ in range(200):
        out = hook({"image": image, "mask": mask})
        size = out["mask"].shape[-1]
        counts[size] += 1
        assert out["image"].shape == (2, 3, size, size) and out["mask"].shape == (2, 1, size, size)
        assert out["mask"].dtype == mask.dtype
        assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(out["mask"], (out["image"][:, :1] >= 0.5).float())
        if size == 44:
            assert torch.equal(out["mask"], mask)
        assert out["mask"][1].sum() > 0  # the small object survives the smallest size
    assert all(25 <= n <= 55 for n in counts.values()), counts


@pytest.mark.parametrize(("size", "divisor", "expected"), [
    (352, 32, [224, 256, 288, 320, 352]),  # the authors' sizes at their input size
    (64, 32, [64]),  # no multiple of 32 lies in 41..63: never larger than the run's size
    (64, 8, [48, 56, 64]),
    (64, 1, [41, 47, 52, 58, 64]),
    (512, 32, [352, 384, 416, 480, 512]),
])
def test_multiscale_sizes_follow_the_input_size(size: int, divisor: int, expected: list) -> None:
    hook = MultiScale().resolved(size, divisor)
    assert hook.sizes == expected and hook.record() == {"sizes": expected}
    assert all(0.63 * size <= s <= size and s % divisor == 0 for s in hook.sizes)
    assert str(hook) == f"multi-scale batches of {', '.join(map(str, expected))} px"


def test_multiscale_explicit_sizes_and_scales() -> None:
    assert MultiScale(sizes=[224, 352]).resolved(64, 32).sizes == [224, 352]  # kept as set
    # each scaled size rounded to the nearest multiple inside the scaled range (264..440)
    assert MultiScale(scales=[0.75, 1, 1.25]).resolved(352, 32).sizes == [288, 352, 416]
    with pytest.raises(ConfigError, match=r"sizes \(pixels\) or scales .*, not both"):
        MultiScale(sizes=[64], scales=[1.0])
    with pytest.raises(ConfigError, match="positive scales"):
        MultiScale(scales=[0.5, -1])
    with pytest.raises(ConfigError, match=r"no multiple of the model's input divisor 32 lies "
                                          r"between 0\.9 and 0\.95 x data\.size 64"):
        MultiScale(scales=[0.9, 0.95]).resolved(64, 32)


def test_the_model_file_config_shows_the_sizes_trained_at() -> None:
    config = load_config("default", ["method=msnet", "data.size=64"])
    trained = as_trained(config, "train", MultiScale().resolved(64, 32))
    assert trained.stages["train"].batch_hook.options == {"sizes": [64]}
    assert config.stages["train"].batch_hook.options == {}  # what was asked stays as asked
    assert as_trained(config, "train", BatchHook()) is config  # a hook with nothing to add
