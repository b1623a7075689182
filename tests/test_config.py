"""Run configuration: presets, ``extends:`` chains, overrides and their error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from condseg.config import ConfigError, RunConfig, list_presets, load_config

PAPER_PRESETS = {"kvasir-seg", "kvasir-sessile", "glas", "isic2016", "isic2017", "demo"}
TABLE_PRESETS = {"table3-net0", "table3-net0-cr", "table3-one-stage", "table3-two-stage-no-cr",
                 "table3-two-stage-cr", "ablation-baseline", "ablation-sid-cdfa"}


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS | TABLE_PRESETS | {"default"}))
def test_every_preset_loads(name: str) -> None:
    assert isinstance(load_config(name), RunConfig)
    assert name in list_presets()


def test_default_is_the_paper_recipe() -> None:
    c = load_config("kvasir-seg")
    assert (c.data.size, c.data.batch_size, c.stages) == (256, 4, [1, 2])
    assert (c.stage1.lr, c.stage1.encoder_lr, c.stage1.consistency) == (1e-4, 1e-4, True)
    assert (c.stage2.lr, c.stage2.encoder_lr, c.stage2.encoder_init) == (1e-4, 1e-5, "stage1")
    for s in (c.stage1, c.stage2):
        assert (s.max_epochs, s.plateau_patience, s.early_stop_patience) == (300, 30, 100)
    a1, a2 = c.stage1.augmentation, c.stage2.augmentation
    assert (a1.rotate, a1.p_rotate, a1.p_flip) == (90, 0.5, 0.5)
    assert (a2.rotate, a2.p_rotate, a2.p_flip) == (35, 0.3, 0.3)
    assert c.data.mean == (0.485, 0.456, 0.406) and c.data.std == (0.229, 0.224, 0.225)
    assert load_config("table3-two-stage-cr").model_dump() | {"description": ""} == (
        c.model_dump() | {"description": ""})


def test_table_presets_change_only_what_they_name() -> None:
    base = load_config("default")
    net0 = load_config("table3-net0")
    assert net0.stages == [1] and not net0.stage1.consistency
    assert load_config("table3-net0-cr").stage1.consistency
    one = load_config("table3-one-stage")
    assert one.stages == [2] and one.stage2.encoder_init == "pretrained"
    assert not load_config("table3-two-stage-no-cr").stage1.consistency
    assert load_config("ablation-baseline").model.options["variant"] == "baseline"
    sid = load_config("ablation-sid-cdfa")
    assert sid.model.options == {**base.model.options, "variant": "sid_cdfa"}
    assert sid.stage2 == base.stage2


def test_demo_extends_default_with_a_deep_merge() -> None:
    demo, base = load_config("demo"), load_config("default")
    assert demo.model.pretrained is False
    assert demo.model.options["width"] < base.model.options["width"]
    assert demo.model.options["cdfa_mode"] == base.model.options["cdfa_mode"]  # kept by merge
    assert demo.stage2.augmentation == base.stage2.augmentation


def test_user_file_extends_preset_and_relative_file(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("extends: kvasir-seg\nseed: 7\nstage1: {lr: 2.0e-4}\n")
    (tmp_path / "run.yaml").write_text("extends: base.yaml\nstage1: {max_epochs: 3}\n")
    c = load_config(tmp_path / "run.yaml")
    assert (c.seed, c.stage1.lr, c.stage1.max_epochs, c.stage1.plateau_patience) == (
        7, 2e-4, 3, 30)


def test_circular_extends_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_overrides_parse_yaml_values() -> None:
    c = load_config("demo", ["stage2.lr=3e-4", "data.skip=[a, b]", "model.options.width=16",
                             "precision=bf16-mixed", "stage1.consistency=false", "devices=2",
                             "stage1.augmentation.rotate=10"])
    assert c.stage2.lr == pytest.approx(3e-4)
    assert c.data.skip == ["a", "b"]
    assert c.model.options["width"] == 16
    assert c.precision == "bf16-mixed" and c.devices == 2
    assert c.stage1.consistency is False and c.stage1.augmentation.rotate == 10


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stage1.lrr=1", r"unknown config key 'stage1\.lrr' \(did you mean 'stage1\.lr'\?\); "
                         r"valid keys of section 'stage1': max_epochs, lr, encoder_lr"),
        ("sed=1", r"unknown config key 'sed' \(did you mean 'seed'\?\).*precision"),
        ("stage2.augmentation.angle=3", r"'stage2\.augmentation\.angle'.*rotate, p_rotate"),
        ("stage1.lr=fast", r"stage1\.lr: .*valid number.*'fast'"),
        ("precision=64", r"precision: .*'32', 'bf16-mixed' or '16-mixed'"),
        ("stage1.augmentation.p_flip=1.5", r"stage1\.augmentation\.p_flip: .*less than or equal"),
        ("stage1.lr.x=1", r"stage1\.lr is not a section"),
        ("stage1.lr", r"not of the form key\.sub=value"),
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
