"""Run configuration: presets, ``extends:`` chains, overrides and their error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from condseg.config import RunConfig, list_presets, load_config
from condseg.errors import CondsegError, ConfigError

PAPER_PRESETS = {"kvasir-seg", "kvasir-sessile", "glas", "isic2016", "isic2017", "demo"}
TABLE_PRESETS = {"table3-net0", "table3-net0-cr", "table3-one-stage", "table3-two-stage-no-cr",
                 "table3-two-stage-cr", "ablation-baseline", "ablation-sid-cdfa"}


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS | TABLE_PRESETS | {"default"}))
def test_every_preset_loads(name: str) -> None:
    assert isinstance(load_config(name), RunConfig)
    assert name in list_presets()


def test_default_is_the_paper_recipe() -> None:
    c = load_config("kvasir-seg")
    assert c.method == "condseg" and list(c.stages) == c.stages_to_train() == ["stage1", "stage2"]
    assert (c.data.size, c.data.batch_size) == (256, 4)
    s1, s2 = c.stages["stage1"], c.stages["stage2"]
    assert s1.model.name == "condseg-net0" and s1.model.inherit == ["encoder"]
    assert (s1.loss.name, s1.loss.options, s1.views) == ("condseg-cr", {"consistency": True},
                                                          ["strong"])
    assert (s1.optimizer.name, s1.optimizer.lr, s1.optimizer.encoder_lr) == ("adam", 1e-4, 1e-4)
    assert s2.model is None and s2.init == {"encoder": "stage1"} and s2.loss.name == "condseg-sid"
    assert (s2.optimizer.lr, s2.optimizer.encoder_lr) == (1e-4, 1e-5)
    for s in (s1, s2):
        assert (s.max_epochs, s.early_stop_patience) == (300, 100)
        assert (s.schedule.name, s.schedule.patience, s.schedule.monitor) == (
            "plateau", 30, "val/loss")
    a1, a2 = s1.augmentation, s2.augmentation
    assert (a1.rotate, a1.p_rotate, a1.p_flip) == (90, 0.5, 0.5)
    assert (a2.rotate, a2.p_rotate, a2.p_flip) == (35, 0.3, 0.3)
    assert c.data.mean is None and c.data.std is None  # the encoder's own normalisation
    assert load_config("table3-two-stage-cr").model_dump() | {"description": ""} == (
        c.model_dump() | {"description": ""})


def test_table_presets_change_only_what_they_name() -> None:
    base = load_config("default")
    net0 = load_config("table3-net0")
    s1 = net0.stages["stage1"]
    assert net0.stages_to_train() == ["stage1"]
    assert s1.loss.options == {"consistency": False} and s1.views == []
    assert load_config("table3-net0-cr").stages["stage1"] == base.stages["stage1"]
    one = load_config("table3-one-stage")
    assert one.stages_to_train() == ["stage2"] and one.stages["stage2"].init == {"encoder": None}
    assert not load_config("table3-two-stage-no-cr").stages["stage1"].loss.options["consistency"]
    assert load_config("ablation-baseline").model.options["variant"] == "baseline"
    sid = load_config("ablation-sid-cdfa")
    assert sid.model.options == {**base.model.options, "variant": "sid_cdfa"}
    assert sid.stages == base.stages


def test_demo_extends_default_with_a_deep_merge() -> None:
    demo, base = load_config("demo"), load_config("default")
    assert demo.model.pretrained is False
    assert demo.model.options["width"] < base.model.options["width"]
    assert demo.model.options["cdfa_mode"] == base.model.options["cdfa_mode"]  # kept by merge
    demo_aug, base_aug = demo.stages["stage2"].augmentation, base.stages["stage2"].augmentation
    assert (demo_aug.p_flip, demo_aug.rotate, demo_aug.p_rotate) == (
        0.5, base_aug.rotate, base_aug.p_rotate)  # only the flips changed, the rest merged


def test_user_file_extends_preset_and_relative_file(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "extends: kvasir-seg\nseed: 7\nstages: {stage1: {optimizer: {lr: 2.0e-4}}}\n")
    (tmp_path / "run.yaml").write_text("extends: base.yaml\nstages: {stage1: {max_epochs: 3}}\n")
    c = load_config(tmp_path / "run.yaml")
    s1 = c.stages["stage1"]
    assert (c.seed, s1.optimizer.lr, s1.max_epochs, s1.schedule.patience) == (7, 2e-4, 3, 30)


def test_method_option_switches_the_recipe() -> None:
    c = load_config("kvasir-seg", ["method=condseg", "model.name=condseg-pvt"])
    assert c.model.name == "condseg-pvt" and c.description.startswith("ConDSeg on Kvasir")
    # A named component given another name is replaced whole, not merged with the old options;
    # an optimiser keeps its learning rates when only its kind changes.
    swapped = load_config("default", ["stages.stage1.loss.name=bce-dice"]).stages["stage1"]
    assert swapped.loss.options == {}
    adamw = load_config("default", ["stages.stage2.optimizer.name=adamw"]).stages["stage2"]
    assert (adamw.optimizer.name, adamw.optimizer.encoder_lr) == ("adamw", 1e-5)
    with pytest.raises(ConfigError, match=r"stages stage1, stage2 are not stages of method 'unet'"):
        load_config("demo", ["method=unet"])
    with pytest.raises(ConfigError, match="train_stages"):
        load_config("default", ["train_stages=[]"])
    with pytest.raises(CondsegError, match=r"unknown method 'nope'.*condseg"):
        load_config("default", ["method=nope"])


def test_stage_references_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"train_stages names 'stage3'"):
        load_config("default", ["train_stages=[stage3]"])
    with pytest.raises(ConfigError, match=r"init\.encoder names 'stage2', which is not an earl"):
        load_config("default", ["stages.stage1.init.encoder=stage2"])


def test_circular_extends_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_overrides_parse_yaml_values() -> None:
    c = load_config("demo", ["stages.stage2.optimizer.lr=3e-4", "data.skip=[a, b]",
                             "model.options.width=16", "precision=bf16-mixed",
                             "stages.stage1.loss.options.consistency=false", "devices=2",
                             "stages.stage1.augmentation.rotate=10",
                             "stages.stage2.schedule.name=poly"])
    s1, s2 = c.stages["stage1"], c.stages["stage2"]
    assert s2.optimizer.lr == pytest.approx(3e-4) and s2.schedule.name == "poly"
    assert c.data.skip == ["a", "b"]
    assert c.model.options["width"] == 16
    assert c.precision == "bf16-mixed" and c.devices == 2
    assert s1.loss.options["consistency"] is False and s1.augmentation.rotate == 10


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.stage1.optimizer.lrr=1",
         r"unknown config key 'stages\.stage1\.optimizer\.lrr' \(did you mean "
         r"'stages\.stage1\.optimizer\.lr'\?\); valid keys of section "
         r"'stages\.stage1\.optimizer': name, lr, encoder_lr"),
        ("sed=1", r"unknown config key 'sed' \(did you mean 'seed'\?\).*precision"),
        ("stages.stage2.augmentation.angle=3",
         r"'stages\.stage2\.augmentation\.angle'.*rotate, p_rotate"),
        ("stages.stage1.optimizer.lr=fast",
         r"stages\.stage1\.optimizer\.lr: .*valid number.*'fast'"),
        ("stages.stage1.schedule.name=step", r"schedule\.name: .*'plateau', 'poly'"),
        ("precision=64", r"precision: .*'32', 'bf16-mixed' or '16-mixed'"),
        ("stages.stage1.augmentation.p_flip=1.5",
         r"stages\.stage1\.augmentation\.p_flip: .*less than or equal"),
        ("stages.stage1.max_epochs.x=1", r"stages\.stage1\.max_epochs is not a section"),
        ("stages.stage1.optimizer", r"not of the form key\.sub=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("demo", [override])


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(ConfigError, match=r"no config file or preset named 'kvasir'.*kvasir-seg"):
        load_config("kvasir")


def test_yaml_round_trip(tmp_path: Path) -> None:
    c = load_config("demo", ["data.root=/data/x", "precision=32"])
    path = tmp_path / "config.yaml"
    path.write_text(c.to_yaml())
    assert load_config(path) == c


def test_renaming_the_model_drops_the_options_written_for_the_old_one() -> None:
    # demo.yaml sets options (resnet18, width 32) for the recipe's ConDSeg; U-Net has no width.
    assert load_config("demo", ["model.name=unet"]).model.options == {}
    renamed = load_config("demo", ["model.name=unet", "model.options.encoder=resnet18"])
    assert renamed.model.options == {"encoder": "resnet18"}
    assert load_config("demo", ["model.name=condseg"]).model.options["width"] == 32


def test_an_encoder_inside_a_provided_part_is_not_fetched_again() -> None:
    from condseg.training.stage import _provided

    assert _provided("net.encoder", {"net.encoder": "stage1"})
    assert _provided("net.encoder", {"net": "stage1"})
    assert not _provided("net.encoder", {"encoder": "stage1"})
    assert not _provided("encoder", {"encoder_head": "stage1"})


LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=True))


@pytest.mark.parametrize("text", [LAUGHS, "a: &a [*a]\n", "a: &a {b: *a}\n"],
                         ids=["billion-laughs", "self-list", "self-mapping"])
def test_yaml_aliases_that_expand_without_bound_are_refused(text: str, tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{path}: its YAML aliases \(\*name\) expand to "
                                          r"more than 100,000 values; write the values out"):
        load_config(path)


def test_an_override_value_is_bounded_like_a_file() -> None:
    value = "[&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]" + "".join(
        f", &{n} [{', '.join([f'*{p}'] * 10)}]" for p, n in zip("abcd", "bcde", strict=True)) + "]"
    with pytest.raises(ConfigError, match=r"^override 'description=\[&a .*expand to more than"):
        load_config("default", [f"description={value}"])


def test_a_shared_anchor_is_copied_so_an_override_changes_one_place(tmp_path: Path) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text("stages:\n  stage1: {optimizer: &opt {lr: 0.002}}\n"
                    "  stage2: {optimizer: *opt}\n")
    config = load_config(path, ["stages.stage1.optimizer.lr=0.005"])
    assert config.stages["stage1"].optimizer.lr == 0.005
    assert config.stages["stage2"].optimizer.lr == 0.002
