"""`condseg compare`: paired statistics, the Table 1 layout and its files, the CLI, the figures.

Evaluation folders, run folders and their logs are written by hand here, so the tables are
checked against known numbers; only the figure test builds (but never trains) a real model.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from rich.console import Console
from scipy import stats as sps
from typer.testing import CliRunner

from condseg.cli import app
from condseg.errors import CompareError
from condseg.evaluation.compare import (
    ImageChoice,
    best_labels,
    compare,
    evenly_spaced,
    figure_images,
    latex_escape,
    parse_images,
    read_run,
    stage_names,
)
from condseg.evaluation.stats import bootstrap_ci, paired_differences, paired_test, wilcoxon_p

runner = CliRunner()
NAMES = [f"img{i}" for i in range(8)]
REF_DICE = [0.5] * 8
# Distinct absolute differences with one negative: W- = rank 3, so the exact two-sided p is
# 2 * #{subsets of 1..8 with sum <= 3} / 2^8 = 2 * 5 / 256.
DIFFS = [0.01, 0.02, -0.03, 0.04, 0.05, 0.06, 0.07, 0.08]
RUN_DICE = [r + d for r, d in zip(REF_DICE, DIFFS, strict=True)]


# --------------------------------------------------------------------------- hand-made inputs


def write_evaluation(
    folder: Path,
    dice: list[float],
    *,
    names: list[str] = NAMES,
    data_root: str = "/data/kvasir-seg",
    split: str = "test",
    model: str = "condseg",
    resolution: str = "network",
    empty_predictions: int = 0,
    **protocol: object,
) -> Path:
    """summary.json + per_image.csv as `condseg evaluate --out` writes them (IoU = Dice/(2 -
    Dice), recall and precision set from Dice so each metric has a known mean); the first
    ``empty_predictions`` images scored as an empty prediction of a non-empty mask."""
    folder.mkdir(parents=True)
    rows = [
        {"name": n, "iou": d / (2 - d), "dice": d, "recall": min(1.0, d + 0.05),
         "precision": d - 0.05, "specificity": 0.99, "hd95": ""}
        for n, d in zip(names, dice, strict=True)
    ]
    for row in rows[:empty_predictions]:
        row.update(iou=0.0, dice=0.0, recall=0.0, precision=1.0)  # precision 0/0 = 1
    with (folder / "per_image.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    metrics = {
        key: {"mean": float(np.mean([r[key] for r in rows])), "std": 0.0, "n": len(rows),
              "missing": 0}
        for key in ("iou", "dice", "recall", "precision", "specificity")
    }
    metrics["hd95"] = {"mean": None, "std": None, "n": 0, "missing": len(rows)}
    summary = {
        "protocol": {"data_root": data_root, "split": split, "resolution": resolution,
                     "input_size": [64, 64], "threshold": 0.5, "n_images": len(rows),
                     "model": model, **protocol},
        "metrics": metrics,
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return folder


def write_run(
    folder: Path, method: str, *, stages: tuple[str, ...] = ("stage1", "stage2"),
    finished: tuple[str, ...] = ("stage1", "stage2"), model_file: Path | None = None,
) -> Path:
    """config.yaml, per-stage metrics.csv (Lightning layout: train and validation rows) and
    result.json for the finished stages."""
    folder.mkdir(parents=True)
    config = {"method": method, "description": f"{method} run",
              "model": {"name": method, "options": {}}, "data": {"root": "/data/kvasir-seg"},
              "stages": {name: {"max_epochs": 3} for name in stages}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in stages:
        stage = folder / name
        stage.mkdir()
        lines = ["epoch,step,train/loss_epoch,val/loss,val/miou,val/mdsc"]
        for epoch in range(3):
            lines.append(f"{epoch},{epoch * 10 + 9},{1.0 - 0.2 * epoch},,,")
            lines.append(f"{epoch},{epoch * 10 + 9},,{0.9 - 0.2 * epoch},"
                         f"{0.5 + 0.1 * epoch},{0.6 + 0.1 * epoch}")
        (stage / "metrics.csv").write_text("\n".join(lines) + "\n")
        if name in finished:
            path = model_file or stage / "model.safetensors"
            (stage / "result.json").write_text(json.dumps({"model_file": str(path)}))
    return folder


def quiet() -> Console:
    return Console(record=True, width=200, file=io.StringIO())


@pytest.fixture
def inputs(tmp_path: Path) -> list[Path]:
    """A reference evaluation, a run with test and val evaluations, and an evaluation of
    other images."""
    ref = write_evaluation(tmp_path / "unet-eval", REF_DICE, model="unet")
    run = write_run(tmp_path / "condseg-run", "condseg")
    write_evaluation(run / "evaluation" / "test", RUN_DICE)
    write_evaluation(run / "evaluation" / "val", [0.7] * 4, names=NAMES[:4], split="val")
    other = write_evaluation(tmp_path / "m2snet-eval", [0.6] * 5, names=NAMES[:5],
                             model="m2snet", method="m2snet")
    return [ref, run, other]


# --------------------------------------------------------------------------- statistics


def test_wilcoxon_matches_the_exact_value_and_scipy() -> None:
    diff = paired_differences(RUN_DICE, REF_DICE)
    p, note = wilcoxon_p(diff)
    assert p == pytest.approx(10 / 256)
    assert p == pytest.approx(sps.wilcoxon(RUN_DICE, REF_DICE).pvalue)
    assert note == ""


def test_identical_scores_give_p_one_and_a_note() -> None:
    result = paired_test([0.8] * 6, [0.8] * 6)
    assert (result.p_value, result.mean_diff, result.ci_low, result.ci_high) == (1.0, 0, 0, 0)
    assert "identical" in result.note
    empty = paired_test([None, 0.5], [0.4, None])
    assert empty.n == 0 and math.isnan(empty.p_value) and empty.note


def test_missing_scores_are_dropped_pairwise() -> None:
    diff = paired_differences([0.9, None, 0.7, 0.6], [0.8, 0.5, None, 0.5])
    np.testing.assert_allclose(diff, [0.1, 0.1])


def test_bootstrap_interval_brackets_the_mean_and_is_seeded() -> None:
    diff = np.random.default_rng(1).normal(0.02, 0.05, 200)
    low, high = bootstrap_ci(diff)
    assert low < diff.mean() < high and low < 0.02 < high
    assert bootstrap_ci(diff) == (low, high)
    assert bootstrap_ci(diff, seed=1) != (low, high)
    reference = sps.bootstrap((diff,), np.mean, n_resamples=10_000, method="percentile",
                              random_state=0).confidence_interval
    assert low == pytest.approx(reference.low, abs=2e-3)
    assert high == pytest.approx(reference.high, abs=2e-3)


def test_bootstrap_of_many_images_is_blocked_not_truncated() -> None:
    diff = np.random.default_rng(2).normal(0.0, 0.1, 5000)
    low, high = bootstrap_ci(diff, n_resamples=2000)
    half = 1.96 * diff.std() / math.sqrt(diff.size)
    assert high - low == pytest.approx(2 * half, rel=0.15)


# --------------------------------------------------------------------------- the table


def test_table_rows_columns_and_values(inputs: list[Path]) -> None:
    result = compare(inputs)
    assert result.labels == ["unet", "condseg", "m2snet"]
    assert result.columns == ["kvasir-seg/test", "kvasir-seg/val"]
    assert result.value("unet", "kvasir-seg/test", "dice") == pytest.approx(50.0)
    assert result.value("condseg", "kvasir-seg/test", "dice") == pytest.approx(
        100 * np.mean(RUN_DICE))
    assert result.value("condseg", "kvasir-seg/val", "precision") == pytest.approx(65.0)
    assert result.value("unet", "kvasir-seg/val", "iou") is None


def test_statistics_against_the_first_input(inputs: list[Path]) -> None:
    result = compare(inputs)
    [row] = result.stats
    assert (row.label, row.column, row.test.n) == ("condseg", "kvasir-seg/test", 8)
    assert row.test.mean_diff == pytest.approx(np.mean(DIFFS))
    assert row.test.p_value == pytest.approx(10 / 256)
    assert row.test.ci_low < row.test.mean_diff < row.test.ci_high
    notes = "\n".join(result.notes)
    assert "m2snet on kvasir-seg/test: different images (5 vs 8" in notes
    assert "condseg on kvasir-seg/val: the reference unet was not evaluated on it" in notes


def test_output_files(inputs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    compare(inputs, out_dir=out)
    markdown = (out / "compare.md").read_text().splitlines()
    assert markdown[0].startswith("| Method | kvasir-seg/test mIoU | kvasir-seg/test mDSC |")
    assert markdown[2].startswith("| unet |") and "| — |" in markdown[2]
    assert "| 53.75 |" in markdown[3] and "| **60.00** |" in markdown[4]  # best of the column

    with (out / "compare.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == ["unet", "condseg", "m2snet"]
    assert float(table[0]["kvasir-seg/test mDSC"]) == pytest.approx(50.0)
    assert table[0]["kvasir-seg/val mDSC"] == ""

    tex = (out / "compare.tex").read_text()
    assert tex.startswith("\\begin{tabular}{lcccc cccc}\n\\toprule\n")
    assert "\\multicolumn{4}{c}{kvasir-seg/test}" in tex and "\\cmidrule(lr){2-5}" in tex
    assert "\\textbf{60.00}" in tex and "\\textbf{53.75}" not in tex
    assert "\\midrule" in tex and tex.rstrip().endswith("\\bottomrule\n\\end{tabular}")
    assert "\\textbf{75.00}" not in tex and "75.00" in tex  # alone in its column: not best

    with (out / "stats.csv").open() as f:
        [stat] = list(csv.DictReader(f))
    assert (stat["reference"], stat["method"], stat["n_images"]) == ("unet", "condseg", "8")
    assert float(stat["wilcoxon_p"]) == pytest.approx(10 / 256, rel=1e-5)
    assert float(stat["ci95_low"]) < float(stat["mean_dice_diff"]) < float(stat["ci95_high"])


def test_precision_of_empty_predictions_is_marked_and_never_bold(tmp_path: Path) -> None:
    """A model that predicts nothing scores precision 100 by 0/0: marked, never the best."""
    empty = write_evaluation(tmp_path / "empty", [0.5] * 8, model="empty", empty_predictions=8)
    some = write_evaluation(tmp_path / "some", [0.9] * 8, model="some", empty_predictions=1)
    good = write_evaluation(tmp_path / "good", [0.9] * 8, model="good")
    out = tmp_path / "cmp"
    result = compare([empty, some, good], out_dir=out, console=quiet())
    column = "kvasir-seg/test"
    assert result.value("empty", column, "precision") == pytest.approx(100.0)
    assert [result.empty_predictions(m, column) for m in result.labels] == [8, 1, 0]
    assert best_labels(result, column, "precision") == {"good"}  # 85.00, not 100 or 86.87
    assert "empty on kvasir-seg/test: precision counts 8 image(s) with an empty prediction" in (
        "\n".join(result.notes))
    markdown = (out / "compare.md").read_text()
    assert "| 100.00† |" in markdown and "| 86.87† |" in markdown and "| **85.00** |" in markdown
    assert "**100.00" not in markdown and markdown.rstrip().endswith("not ranked")
    tex = (out / "compare.tex").read_text()
    assert "100.00$^\\dagger$" in tex and "\\textbf{100.00" not in tex
    assert "\\textbf{85.00}" in tex and "\\footnotesize $^\\dagger$ precision counts" in tex
    assert tex.rstrip().endswith("\\end{tabular}")
    plain = compare([good, write_evaluation(tmp_path / "other", [0.8] * 8, model="other")],
                    out_dir=tmp_path / "plain")
    assert "†" not in (tmp_path / "plain" / "compare.md").read_text() and not any(
        "empty prediction" in n for n in plain.notes)


def test_existing_outputs_are_refused_before_anything_is_written(
    inputs: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    compare(inputs, out_dir=out)
    (out / "compare.md").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        compare(inputs, out_dir=out)
    assert (out / "compare.md").read_text() == "mine"
    compare(inputs, out_dir=out, overwrite=True)
    assert (out / "compare.md").read_text().startswith("| Method")


def test_labels_are_unique_or_given(tmp_path: Path) -> None:
    a = write_evaluation(tmp_path / "a", REF_DICE)
    b = write_evaluation(tmp_path / "b", RUN_DICE)
    assert compare([a, b]).labels == ["condseg (a)", "condseg (b)"]
    assert compare([a, b], labels=["old", "new"]).labels == ["old", "new"]
    with pytest.raises(ValueError, match="one --label per input"):
        compare([a, b], labels=["only"])


def test_resolution_in_the_column_only_when_inputs_differ(tmp_path: Path) -> None:
    a = write_evaluation(tmp_path / "a", REF_DICE, model="unet")
    b = write_evaluation(tmp_path / "b", RUN_DICE, resolution="original")
    result = compare([a, b])
    assert result.columns == ["kvasir-seg/test (network)", "kvasir-seg/test (original)"]
    assert not result.stats


def test_an_evaluation_inside_a_run_takes_the_run_method(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", "chnet")
    evaluation = write_evaluation(run / "evaluation" / "test", REF_DICE, model="CHNet")
    assert compare([evaluation]).labels == ["chnet"]


def test_run_without_evaluation_says_what_to_run(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", "condseg")
    with pytest.raises(ValueError, match="has no evaluation yet") as info:
        compare([run])
    message = str(info.value)
    assert f"condseg evaluate {run / 'stage2'}/model.safetensors" in message
    assert f"--out {run}/evaluation/" in message and "\n" not in message


def test_runs_listing_stage_numbers_use_stage_folders(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", "condseg", finished=("stage1",))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["stages"] = [1, 2]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert stage_names(run, config) == ["stage1", "stage2"]
    assert read_run(run).final_stage == "stage1"  # stage 2 has no result.json yet


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        compare([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a run folder"):
        compare([tmp_path / "empty"])
    folder = write_evaluation(tmp_path / "e", REF_DICE)
    (folder / "per_image.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"per_image\.csv"):
        compare([folder])
    garbled = write_evaluation(tmp_path / "g", REF_DICE)
    (garbled / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"summary\.json is damaged: not JSON"):
        compare([garbled])
    run = write_run(tmp_path / "run", "unet")
    (run / "config.yaml").write_text("method: [unclosed\n  key: value\n")
    with pytest.raises(ValueError, match=r"config\.yaml is damaged: not valid YAML") as info:
        compare([run])
    assert "\n" not in str(info.value)


def test_rich_markup_in_names_is_printed_as_written(tmp_path: Path) -> None:
    a = write_evaluation(tmp_path / "a", REF_DICE, data_root="/data/[red]set")
    console = quiet()
    compare([a], labels=["[bold]net[/bold]"], console=console)
    text = console.export_text()
    assert "[bold]net[/bold]" in text and "[red]set/test" in text


def test_image_choice_parses_counts_ranks_and_names() -> None:
    assert parse_images(4) == parse_images("4") == ImageChoice(count=4)
    assert parse_images("worst:3") == ImageChoice(count=3, rank="worst")
    assert parse_images("best:1") == ImageChoice(count=1, rank="best")
    assert parse_images("img2, img0,img2") == ImageChoice(count=2, names=("img2", "img0"))
    assert parse_images("12,") == ImageChoice(count=1, names=("12",))  # a numeric name
    assert parse_images(["a"]) == ImageChoice(count=1, names=("a",))
    for bad, message in (("0", "at least 1"), ("worst:0", "worst:K"), ("best:x", "best:K"),
                         (",", "names no image")):
        with pytest.raises(CompareError, match=message):
            parse_images(bad)


def test_worst_and_best_images_by_dice_against_the_others(tmp_path: Path) -> None:
    """Gains of the first input over the mean of the others: img0 -0.3, img1 +0.2, img2 0,
    img3 +0.4, img4 -0.1 (with one input alone: its own Dice)."""
    names = NAMES[:5]
    ref = write_evaluation(tmp_path / "ref", [0.5, 0.8, 0.6, 0.9, 0.4], names=names,
                           data_root=str(tmp_path))
    a = write_evaluation(tmp_path / "a", [0.9, 0.5, 0.6, 0.4, 0.6], names=names,
                         data_root=str(tmp_path))
    b = write_evaluation(tmp_path / "b", [0.7, 0.7, 0.6, 0.6, 0.4], names=names,
                         data_root=str(tmp_path))
    result = compare([ref, a, b])
    assert figure_images(result, parse_images("worst:2")) == (tmp_path, ["img0", "img4"])
    assert figure_images(result, parse_images("best:3")) == (tmp_path, ["img3", "img1",
                                                                         "img2"])
    assert figure_images(result, parse_images("img4,img1")) == (tmp_path, ["img4", "img1"])
    assert figure_images(result, parse_images(2)) == (tmp_path, ["img0", "img4"])  # spaced
    alone = compare([ref])
    assert figure_images(alone, parse_images("worst:1")) == (tmp_path, ["img4"])
    with pytest.raises(CompareError, match=r"--images: nope not among the 5 images of \S+/test "
                                           r"that every input .*\(e\.g\. img0, img1, img2\)"):
        figure_images(result, parse_images("img1,nope"))


def test_helpers() -> None:
    assert evenly_spaced(["d", "a", "c", "b", "e"], 3) == ["a", "c", "e"]
    assert evenly_spaced(["b", "a"], 4) == ["a", "b"]
    assert latex_escape("a_b & 50%") == "a\\_b \\& 50\\%"


# --------------------------------------------------------------------------- CLI


def test_cli_prints_writes_and_refuses(inputs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", *map(str, inputs), "--out", str(out)]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "condseg" in result.output and "m2snet" in result.output
    assert "Paired per-image Dice against unet" in result.output
    assert "different images" in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "compare.csv", "compare.md", "compare.tex", "stats.csv"]

    again = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0

    labelled = runner.invoke(app, ["compare", *map(str, inputs[:2]), "--label", "A",
                                   "--label", "B"], env={"COLUMNS": "200"})
    assert labelled.exit_code == 0 and "│ A " in labelled.output

    missing = runner.invoke(app, ["compare", str(tmp_path / "nope")], env={"COLUMNS": "200"})
    assert missing.exit_code == 2 and "not found" in missing.output

    figures, tables = tmp_path / "figures", tmp_path / "tables"
    bad = runner.invoke(app, ["compare", *map(str, inputs), "--out", str(tables), "--figure",
                              str(figures), "--images", "img1,gone"], env={"COLUMNS": "200"})
    assert bad.exit_code == 2, bad.output
    assert "error: --images: gone not among the 5 images of kvasir-seg/test" in bad.output
    assert not figures.exists() and not tables.exists()  # refused before writing anything


# --------------------------------------------------------------------------- figures


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny untrained model file and a six-image synthetic dataset at 64x64."""
    import condseg
    from condseg.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("figure")
    model = condseg.create_model("condseg-net0", encoder="resnet18")
    path = condseg.save_model(root / "net0.safetensors", model, mean=[0.485, 0.456, 0.406],
                              std=[0.229, 0.224, 0.225], input_size=64)
    data = synthesize(root / "data", n_train=2, n_val=4, size=64)
    return path, data


def test_figures(model_and_data: tuple[Path, Path], tmp_path: Path) -> None:
    model_file, data = model_and_data
    names = (data / "val.txt").read_text().split()
    ref = write_evaluation(tmp_path / "ref", [0.5] * 4, names=names, data_root=str(data),
                           split="val", model_file=str(model_file))
    run = write_run(tmp_path / "run", "condseg", model_file=model_file)
    write_evaluation(run / "evaluation" / "val", [0.6] * 4, names=names, data_root=str(data),
                     split="val")
    lost = write_evaluation(tmp_path / "lost", [0.4] * 4, names=names, data_root=str(data),
                            split="val", model="unet", model_file=str(tmp_path / "gone.st"))
    figures = tmp_path / "figures"
    chosen = [names[3], names[0], names[1]]
    result = compare([ref, run, lost], figure_dir=figures, images=",".join(chosen))
    assert result.figure_images == chosen  # the rows, in the order given

    notes = "\n".join(result.notes)
    assert f"unet left out of predictions.png: model file {tmp_path / 'gone.st'} not found" in notes
    assert "has no curve in curves.png: no training run" in notes
    with Image.open(figures / "predictions.png") as im:
        assert im.format == "PNG"
        # 2 + 2 columns of 2.2 in and 3 rows of 2.2 in (+ 0.3 in) at 100 dpi
        assert im.size == (880, 690)
        pixels = np.asarray(im.convert("RGB"))
        assert pixels.std() > 10  # not a blank canvas
    with Image.open(figures / "curves.png") as im:
        assert im.format == "PNG" and im.size == (1200, 400)
    assert set(result.written) == {figures / f"{name}.{kind}" for name in ("predictions", "curves")
                                   for kind in ("png", "pdf")}
    for name in ("predictions", "curves"):
        assert (figures / f"{name}.pdf").read_bytes().startswith(b"%PDF")  # vector, beside
    with pytest.raises(FileExistsError):
        compare([ref], figure_dir=figures)



def test_figure_prepares_each_model_once_and_shows_what_predict_writes(
    model_and_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each model is prepared once for all its images (not once per image), and its masks in
    predictions.png are, pixel for pixel, the files `condseg predict` writes for those images."""
    import condseg.inference.predict as inference
    import condseg.viz as viz
    from condseg.data.dataset import find_pair, read_mask

    model_file, data = model_and_data
    names = (data / "val.txt").read_text().split()
    # one model file, scored differently: identical scores would be one evaluation twice
    inputs = [write_evaluation(tmp_path / label, [dice] * 4, names=names, data_root=str(data),
                               split="val", model=label, model_file=str(model_file))
              for label, dice in (("first", 0.5), ("second", 0.6))]
    prepared, drawn = [], {}
    original_prepare, original_grid = inference.prepare, viz.prediction_grid

    def counting_prepare(*args, **kwargs):  # type: ignore[no-untyped-def]
        prepared.append(args[0])
        return original_prepare(*args, **kwargs)

    def keeping_grid(names, images, truths, predictions, *args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.update(predictions)
        return original_grid(names, images, truths, predictions, *args, **kwargs)

    monkeypatch.setattr(inference, "prepare", counting_prepare)
    monkeypatch.setattr(viz, "prediction_grid", keeping_grid)
    result = compare(inputs, figure_dir=tmp_path / "figures", images=",".join(names))
    assert result.figure_images == names and len(names) > 1
    assert len(prepared) == 2  # one model per input, each prepared once

    monkeypatch.setattr(inference, "prepare", original_prepare)
    images = [str(find_pair(data, name)[0]) for name in names]
    out = tmp_path / "predicted"
    written = runner.invoke(app, ["predict", str(model_file), *images, "--out", str(out),
                                  "--workers", "0"])
    assert written.exit_code == 0, written.output
    for label in ("first", "second"):
        for name, mask in zip(names, drawn[label], strict=True):
            np.testing.assert_array_equal(mask, read_mask(out / f"{name}.png"))
