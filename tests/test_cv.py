"""Cross-validation and multi-seed runs on small synthetic data: per-run validation results,
their mean ± std, the ensemble, separate jobs per fold, and ``train --fold``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from condseg.cli import app
from condseg.config import load_config
from condseg.data.dataset import read_split
from condseg.data.synthetic import synthesize
from condseg.errors import CrossValidationError
from condseg.evaluation.metrics import METRIC_NAMES
from condseg.inference.predict import predict
from condseg.models.ensemble import Ensemble
from condseg.models.model_file import load_model
from condseg.training.cv import (
    cross_validate,
    fold_overrides,
    list_folds,
)

# The demo's narrow ConDSeg, made tiny: 64 px, width 16, ResNet-18, one step per stage.
TINY = ["data.size=64", "data.batch_size=3", "data.num_workers=0", "model.options.width=16",
        "stages.stage1.max_epochs=1", "stages.stage2.max_epochs=1",
        "stages.stage1.limit_train_batches=1", "stages.stage2.limit_train_batches=1",
        "progress_bar=false"]
TINY_UNET = ["method=unet", "model.options.encoder=resnet18", "model.pretrained=false",
             "model.options.decoder_channels=[32,16,16,8,8]", "data.size=64",
             "data.batch_size=4", "data.num_workers=0", "stages.train.max_epochs=1",
             "stages.train.limit_train_batches=1", "progress_bar=false"]
K = 3


@pytest.fixture(scope="module")
def folded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic images: 9 in 3 folds (ROOT/folds/<k>/train.txt, val.txt), 3 held out in
    test.txt; no top-level train/val split, so only the folds can be trained on."""
    root = synthesize(tmp_path_factory.mktemp("folded"), n_train=9, n_val=3, size=64)
    names = read_split(root, "train")
    (root / "test.txt").write_text((root / "val.txt").read_text())
    (root / "train.txt").unlink()
    (root / "val.txt").unlink()
    for k in range(K):
        val = names[3 * k : 3 * k + 3]
        (root / "folds" / str(k)).mkdir(parents=True)
        (root / "folds" / str(k) / "val.txt").write_text("\n".join(val) + "\n")
        train = [n for n in names if n not in val]
        (root / "folds" / str(k) / "train.txt").write_text("\n".join(train) + "\n")
    return root


@pytest.fixture(scope="module")
def cv(folded: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    console = Console(record=True, width=160)
    out = tmp_path_factory.mktemp("cv") / "cv"
    result = cross_validate(load_config("demo", TINY), folded, out, console=console)
    return {"result": result, "out": out, "text": console.export_text()}


def test_fold_layout_helpers(folded: Path, tmp_path: Path) -> None:
    assert list_folds(folded) == [0, 1, 2]
    assert list_folds(tmp_path) == []
    assert fold_overrides(2) == ["data.train_split=folds/2/train", "data.val_split=folds/2/val"]


def test_kfold_run_gives_per_fold_results_an_aggregate_and_an_ensemble(
    cv: dict, folded: Path
) -> None:
    out, result = cv["out"], cv["result"]
    assert [run.name for run in result.runs] == ["fold0", "fold1", "fold2"]
    for k, run in enumerate(result.runs):
        config = load_config(out / f"fold{k}" / "config.yaml")
        assert (config.data.train_split, config.data.val_split) == (f"folds/{k}/train",
                                                                     f"folds/{k}/val")
        evaluation = json.loads((out / f"fold{k}" / "evaluation" / "val" / "summary.json")
                                .read_text())
        assert evaluation["protocol"]["split"] == f"folds/{k}/val"
        assert evaluation["protocol"]["n_images"] == 3
        assert run.metrics["dice"] == evaluation["metrics"]["dice"]["mean"]
        assert (out / f"fold{k}" / "evaluation" / "test" / "summary.json").is_file()

    with (out / "cv_runs.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["run"] for row in rows] == ["fold0", "fold1", "fold2"]
    assert list(rows[0]) == ["run", "fold", "seed", *METRIC_NAMES]
    summary = json.loads((out / "cv_summary.json").read_text())
    dice = [run.metrics["dice"] for run in result.runs]
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(np.mean(dice))
    assert summary["metrics"]["dice"]["std"] == pytest.approx(np.std(dice))
    assert summary["metrics"]["dice"]["n"] == K
    assert [r["name"] for r in summary["runs"]] == ["fold0", "fold1", "fold2"]
    # Relative to the cross-validation folder, which may be moved or copied whole.
    final = result.runs[0].training.model_file.parent.name
    assert [(r["model_file"], r["evaluation"]) for r in summary["runs"]] == [
        (f"fold{k}/{final}/model.safetensors", f"fold{k}/evaluation/val") for k in range(K)]
    assert "mean ± std" in cv["text"]
    assert "validation results of 3 runs (percent; cpu float32)" in cv["text"]

    ensemble = load_model(result.ensemble_file)
    assert result.ensemble_file == out / "ensemble.safetensors"
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == K
    image = folded / "images" / f"{read_split(folded, 'test')[0]}.png"
    folds = [predict(load_model(run.training.model_file), image).prob for run in result.runs]
    np.testing.assert_allclose(predict(ensemble, image).prob, np.mean(folds, axis=0),
                               atol=1e-5)
    test = json.loads((out / "evaluation" / "test" / "summary.json").read_text())
    assert test["protocol"]["model"] == "ensemble" and test["protocol"]["n_images"] == 3


def test_the_console_output_is_also_in_train_log(cv: dict) -> None:
    """CV/train.log gets everything cv printed; each run's train.log its own part."""
    out = cv["out"]
    log = (out / "train.log").read_text()
    assert "fold0: training" in log and "mean ± std" in log and "ensemble of 3 models" in log
    for k in range(K):
        run_log = (out / f"fold{k}" / "train.log").read_text()
        assert f"-> {out / f'fold{k}' / 'stage2' / 'model.safetensors'}\n" in run_log
        assert "mean ± std" not in run_log


def test_a_finished_cross_validation_is_reused_not_retrained_or_overwritten(
    cv: dict, folded: Path
) -> None:
    out = cv["out"]
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("fold*/stage2/model.safetensors")}
    outputs = {p: p.stat().st_mtime_ns for p in (out / "cv_runs.csv", out / "ensemble.safetensors")}
    # Asked again, a finished cross-validation says so and exits 0, as `train --resume` does.
    result = CliRunner().invoke(app, ["cv", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{out} is finished" in " ".join(result.output.split())
    assert f"ensemble: {out / 'ensemble.safetensors'}" in " ".join(result.output.split())
    assert {p: p.stat().st_mtime_ns for p in [*stamps, *outputs]} == {**stamps, **outputs}
    # Not finished (a run lacks its result): the aggregate is not replaced without asking.
    done = out / "fold0" / "stage2" / "result.json"
    done.rename(done.with_suffix(".moved"))
    try:
        with pytest.raises(FileExistsError, match=r"cv_runs\.csv"):
            cross_validate(load_config("demo", TINY), folded, out, console=Console(quiet=True))
    finally:
        done.with_suffix(".moved").rename(done)
    again = cross_validate(load_config("demo", TINY), folded, out, overwrite=True,
                           console=Console(quiet=True))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again.summary == cv["result"].summary
    with pytest.raises(CrossValidationError, match="another configuration"):
        cross_validate(load_config("demo", [*TINY, "seed=7"]), folded, out, overwrite=True)


def test_one_fold_per_job_then_aggregate(folded: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "jobs"
    args = ["cv", "--data", str(folded), "--config", "default", "--out", str(out), *TINY_UNET]
    result = runner.invoke(app, [*args, "--fold", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "fold1"]
    assert "without --fold" in result.output
    # A later job needs neither --data nor the config: CV/config.yaml records both.
    result = runner.invoke(app, ["cv", "--out", str(out), "--fold", "0"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "fold0", "fold1"]
    assert load_config(out / "fold0" / "config.yaml").method == "unet"
    result = runner.invoke(app, [*args, "--fold", "5"])
    assert result.exit_code == 2 and "has no fold [5]" in result.output


def test_multi_seed_runs_aggregate_the_same_way(tmp_path: Path) -> None:
    data = synthesize(tmp_path / "data", n_train=8, n_val=4, size=64)
    config = load_config("default", TINY_UNET)
    with pytest.raises(CrossValidationError, match="--seeds"):
        cross_validate(config, data, tmp_path / "none")
    result = cross_validate(config, data, tmp_path / "seeds", seeds=[0, 1],
                            console=Console(quiet=True))
    assert [run.name for run in result.runs] == ["seed0", "seed1"]
    assert [load_config(tmp_path / "seeds" / n / "config.yaml").seed for n in ("seed0", "seed1")
            ] == [0, 1]
    assert result.summary is not None and result.summary["iou"]["n"] == 2
    assert isinstance(load_model(result.ensemble_file), Ensemble)


def test_train_fold_is_an_ordinary_run_on_that_fold(folded: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--data", str(folded), "--fold", "2", "--out",
                                      str(tmp_path / "run"), *TINY_UNET])
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "run" / "config.yaml")
    assert (config.data.train_split, config.data.val_split) == ("folds/2/train", "folds/2/val")
    assert (tmp_path / "run" / "train" / "model.safetensors").is_file()
