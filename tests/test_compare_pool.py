"""`condseg compare --pool`: the runs of one method (seeds, folds) as one row, mean ± std.

The run and evaluation folders are written by hand (test_compare's helpers), so every pooled
value, spread and paired statistic is checked against a number computed here.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from condseg.cli import app
from condseg.errors import CompareError
from condseg.evaluation.compare import compare
from condseg.layout import DatasetDir
from test_compare import DIFFS, NAMES, RUN_DICE, quiet, write_evaluation, write_run

TEST = "kvasir-seg/test"
FOLDS = "kvasir-seg/folds/*/val"


def seed_run(folder: Path, method: str, dice: list[float], **evaluation: object) -> Path:
    """A finished run with its test-split evaluation."""
    run = write_run(folder, method)
    write_evaluation(run / "evaluation" / "test", dice, **evaluation)
    return run


@pytest.fixture
def seeds(tmp_path: Path) -> list[Path]:
    """Two seeds each of unet (Dice 0.4 and 0.6 on every image: per image 0.5) and condseg
    (RUN_DICE ∓ 0.01: per image RUN_DICE), interleaved."""
    unet = [seed_run(tmp_path / f"unet-seed{s}", "unet", [d] * 8) for s, d in ((0, 0.4), (1, 0.6))]
    condseg = [seed_run(tmp_path / f"condseg-seed{s}", "condseg", [d + shift for d in RUN_DICE])
               for s, shift in ((0, -0.01), (1, 0.01))]
    return [unet[0], condseg[0], unet[1], condseg[1]]


def test_runs_of_one_method_are_one_row_of_mean_and_population_std(seeds: list[Path]) -> None:
    result = compare(seeds, pool=True)
    assert result.labels == ["unet", "condseg"]  # by method, in order of first appearance
    assert result.columns == [TEST]
    assert [e.n_runs for e in result.entries] == [2, 2]
    assert result.value("unet", TEST, "dice") == pytest.approx(50.0)
    assert result.spread("unet", TEST, "dice") == pytest.approx(10.0)  # ddof 0: |0.6-0.4|/2
    iou = [0.4 / 1.6, 0.6 / 1.4]  # each run's mean IoU (IoU = Dice / (2 - Dice) per image)
    assert result.value("unet", TEST, "iou") == pytest.approx(100 * np.mean(iou))
    assert result.spread("unet", TEST, "iou") == pytest.approx(100 * np.std(iou))
    assert result.value("condseg", TEST, "dice") == pytest.approx(100 * np.mean(RUN_DICE))
    assert result.spread("condseg", TEST, "dice") == pytest.approx(1.0)
    assert result.text("unet", TEST, "dice") == "50.00 ± 10.00"
    assert not any("different numbers of runs" in note for note in result.notes)
    unpooled = compare(seeds)
    assert len(unpooled.labels) == 4 and unpooled.spread(unpooled.labels[0], TEST, "dice") is None


def test_paired_statistics_use_the_per_image_mean_over_seeds(seeds: list[Path]) -> None:
    """Per image, unet's mean is 0.5 and condseg's RUN_DICE: the differences are DIFFS, whose
    exact Wilcoxon p is 10/256 (test_compare); neither seed alone gives them."""
    [row] = compare(seeds, pool=True).stats
    assert (row.label, row.column, row.test.n) == ("condseg", TEST, 8)
    assert row.test.mean_diff == pytest.approx(np.mean(DIFFS))
    assert row.test.p_value == pytest.approx(10 / 256)


def test_files_show_mean_and_std_and_the_csv_has_std_columns_and_run_counts(
    seeds: list[Path], tmp_path: Path
) -> None:
    single = write_evaluation(tmp_path / "m2snet-eval", [0.45] * 8, model="m2snet")
    out = tmp_path / "cmp"
    result = compare([*seeds, single], out_dir=out, pool=True)
    assert "the rows pool different numbers of runs: unet 2, condseg 2, m2snet 1" in result.notes

    with (out / "compare.csv").open() as f:
        reader = csv.DictReader(f)
        table = list(reader)
    assert reader.fieldnames is not None
    assert reader.fieldnames[:5] == ["method", "runs", "sources", f"{TEST} mIoU",
                                     f"{TEST} mIoU std"]
    assert [(r["method"], r["runs"]) for r in table] == [("unet", "2"), ("condseg", "2"),
                                                         ("m2snet", "1")]
    assert table[0]["sources"] == f"{seeds[0]};{seeds[2]}"
    assert float(table[0][f"{TEST} mDSC"]) == pytest.approx(50.0)
    assert float(table[0][f"{TEST} mDSC std"]) == pytest.approx(10.0)
    assert float(table[2][f"{TEST} mDSC"]) == pytest.approx(45.0)
    assert table[2][f"{TEST} mDSC std"] == ""  # one run: no spread

    markdown = (out / "compare.md").read_text()
    assert "| 50.00 ± 10.00 |" in markdown and "| **53.75 ± 1.00** |" in markdown  # best by mean
    assert "| 45.00 |" in markdown  # a row of one run prints its value alone
    tex = (out / "compare.tex").read_text()
    assert "\\textbf{53.75 $\\pm$ 1.00}" in tex and "50.00 $\\pm$ 10.00" in tex

    console = quiet()
    compare([*seeds, single], pool=True, console=console)
    text = console.export_text()
    assert "3 methods, 5 runs, percent: mean ± std over runs" in text and "53.75 ± 1.00" in text


def fold_run(cv: Path, fold: int, method: str, dice: float, test_dice: float | None) -> Path:
    """A cross-validation's run of ``fold``: its own validation fold (4 of NAMES per fold) and,
    unless ``test_dice`` is None, the shared test split."""
    run = write_run(cv / f"fold{fold}", method)
    write_evaluation(run / "evaluation" / "val", [dice] * 4, names=NAMES[4 * fold:4 * fold + 4],
                     split=DatasetDir.fold_splits(fold)[1])
    if test_dice is not None:
        write_evaluation(run / "evaluation" / "test", [test_dice] * 8)
    return run


def test_fold_splits_are_one_column_of_every_fold(tmp_path: Path) -> None:
    unet = [fold_run(tmp_path / "unet-cv", k, "unet", d, 0.5) for k, d in ((0, 0.6), (1, 0.8))]
    condseg = [fold_run(tmp_path / "condseg-cv", 0, "condseg", 0.7, 0.6),
               fold_run(tmp_path / "condseg-cv", 1, "condseg", 0.9, None)]
    result = compare([*unet, *condseg], pool=True)
    assert result.columns == [TEST, FOLDS]
    assert compare([*unet, *condseg]).columns == [TEST, "kvasir-seg/folds/0/val",
                                                  "kvasir-seg/folds/1/val"]
    pooled = result.entry("unet").evaluation(FOLDS)
    assert pooled is not None and sorted(pooled.per_image) == sorted(NAMES)  # the folds' union
    assert pooled.per_image["img0"]["dice"] == pytest.approx(0.6)
    assert pooled.per_image["img7"]["dice"] == pytest.approx(0.8)
    assert result.text("unet", FOLDS, "dice") == "70.00 ± 10.00"  # over the folds' means
    assert result.text("condseg", TEST, "dice") == "60.00"  # one of its runs has a test split

    by_column = {row.column: row.test for row in result.stats}
    assert by_column[FOLDS].n == 8 and by_column[FOLDS].mean_diff == pytest.approx(0.1)
    assert by_column[TEST].n == 8
    notes = "\n".join(result.notes)
    assert f"{FOLDS}: the validation split, which selected each model" in notes
    assert (f"condseg on {TEST}: pooled over 1 of its 2 runs; {condseg[1]} not evaluated on it"
            in notes)


def test_repeated_labels_pool_only_when_asked(tmp_path: Path) -> None:
    a, b, c = (write_evaluation(tmp_path / n, [d] * 8) for n, d in (("a", 0.5), ("b", 0.7),
                                                                     ("c", 0.6)))
    with pytest.raises(CompareError, match=r"labels must be unique.*--pool"):
        compare([a, b, c], labels=["x", "x", "y"])
    result = compare([a, b, c], labels=["x", "x", "y"], pool=True)
    assert result.labels == ["x", "y"]
    assert result.text("x", TEST, "dice") == "60.00 ± 10.00"
    assert compare([a, b], pool=True).labels == ["condseg"]  # the method, not de-duplicated


def test_a_pooled_row_with_an_empty_prediction_in_any_run_is_marked(tmp_path: Path) -> None:
    runs = [write_evaluation(tmp_path / "e0", [0.9] * 8, model="empty", empty_predictions=2),
            write_evaluation(tmp_path / "e1", [0.9] * 8, model="empty"),
            write_evaluation(tmp_path / "good", [0.8] * 8, model="good")]
    result = compare(runs, pool=True)
    assert result.empty_predictions("empty", TEST) == 2
    assert result.text("empty", TEST, "precision").endswith("†")
    assert "empty on kvasir-seg/test: precision counts 2 image(s) with an empty prediction as " \
           "100 (0/0) in its runs; not ranked" in result.notes


def test_figures_of_a_pooled_row_are_its_first_run(seeds: list[Path], tmp_path: Path) -> None:
    result = compare(seeds, pool=True, figure_dir=tmp_path / "figures")
    assert (tmp_path / "figures" / "curves.png").is_file()
    assert f"unet in the figures is its first run, {seeds[0]}" in result.notes
    assert f"condseg in the figures is its first run, {seeds[1]}" in result.notes


def test_cli_pool(seeds: list[Path], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", *map(str, seeds), "--pool", "--out", str(out)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "50.00 ± 10.00" in result.output
    assert "Paired per-image Dice against unet" in result.output
    with (out / "compare.csv").open() as f:
        assert [r["runs"] for r in csv.DictReader(f)] == ["2", "2"]
    refused = runner.invoke(app, ["compare", *map(str, seeds[:2]), "--label", "A", "--label",
                                  "A"], env={"COLUMNS": "200"})
    assert refused.exit_code == 2 and "--pool" in refused.output
    help_text = runner.invoke(app, ["compare", "--help"], env={"COLUMNS": "200"}).output
    assert "--pool" in help_text and "mean ± std" in help_text
