"""A training command's request resolved: its configuration and its default run folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from condseg.config import load_config
from condseg.errors import OptionError
from condseg.training.request import check_resume, new_run_dir, run_config, run_name


def test_shorthand_options_are_config_keys_that_overrides_refine() -> None:
    cfg = run_config(None, ["seed=3"], method="msnet", seed=1, precision=None)
    assert (cfg.method, cfg.seed) == ("msnet", 3)
    assert cfg == load_config("default", ["method=msnet", "seed=1", "seed=3"])


def test_a_folder_with_a_config_is_its_own_default(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(load_config("demo", ["seed=7"]).to_yaml())
    assert run_config(None, [], folder=tmp_path).seed == 7
    assert run_config(None, [], folder=tmp_path / "new").seed == load_config("default").seed
    assert run_config("default", [], folder=tmp_path).seed == load_config("default").seed


def test_epochs_apply_to_the_stages_trained_and_overrides_still_win() -> None:
    default = load_config("default")
    first, second = default.stages
    cfg = run_config("default", [f"stages.{second}.max_epochs=5"], epochs=2)
    assert [cfg.stages[first].max_epochs, cfg.stages[second].max_epochs] == [2, 5]
    one = run_config("default", [], epochs=2, stage=second)
    assert one.stages[first].max_epochs == default.stages[first].max_epochs
    assert one.stages[second].max_epochs == 2


def test_run_names_and_new_run_folders(tmp_path: Path) -> None:
    cfg = load_config("default", ["method=msnet"])
    assert run_name(None, cfg) == run_name("default", cfg) == "msnet"
    assert run_name("kvasir-seg", cfg) == "kvasir-seg"
    assert run_name("my/recipe.yaml", cfg) == "recipe"
    first = new_run_dir("demo", tmp_path)
    first.mkdir()
    second = new_run_dir("demo", tmp_path)
    assert first.parent == second.parent == tmp_path
    assert second != first and second.name.startswith(first.name[: len("demo-YYYYmmdd")])


def test_a_resume_that_is_not_a_run_or_not_the_out_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=r"no config\.yaml"):
        check_resume(tmp_path, None)
    (tmp_path / "config.yaml").write_text("")
    check_resume(tmp_path, tmp_path / ".")
    with pytest.raises(OptionError, match=r"--resume .* and --out .* name different"):
        check_resume(tmp_path, tmp_path / "other")
