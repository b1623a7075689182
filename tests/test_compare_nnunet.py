"""Issue 25, point 5: ``condseg compare`` reads nnU-Net v2's results.

The summary.json files are written here as nnU-Net's ``compute_metrics_on_folder`` writes them
(per case and label the counts of small label maps, Dice and IoU NaN for a label in neither;
``save_summary_json``'s string keys, sorted keys, indent 4), checked against nnU-Net's own
writer where nnunetv2 is installed. Two trainers × five folds on one toy dataset then give the
per-class table and the paired tests; the scores of each case are checked against condseg's own
K-class metrics of the same label maps.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from condseg.cli import app
from condseg.errors import CompareError
from condseg.evaluation.compare import compare
from condseg.evaluation.compare.nnunet import read_nnunet
from condseg.evaluation.metrics import class_image_metrics
from condseg.evaluation.names import TABLE_METRICS
from condseg.records import nnunet_summary_path
from test_compare_classes import write_classes_evaluation

runner = CliRunner()
DATASET = "Dataset001_Toy"
CLASSES = ("background", "liver", "tumour")
FOLDS = 5
CASES = [f"toy_{i:03d}" for i in range(15)]  # fold k validates cases k, k+5, k+10
A, B = "nnUNetTrainer", "nnUNetTrainerPDCRUAFR"


def label_maps(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per case a (prediction, reference) pair of 12×12 label maps (0 background, 1 liver,
    2 tumour). The reference has a liver block and, on every other case, a tumour; the
    prediction shifts them by ``seed``-dependent noise, and case 0 has no tumour at all."""
    rng = np.random.default_rng(seed)
    maps = {}
    for i, case in enumerate(CASES):
        ref = np.zeros((12, 12), np.int64)
        ref[2:9, 2:9] = 1
        if i % 2:
            ref[4:7, 4:7] = 2
        pred = ref.copy()
        flip = rng.random(ref.shape) < 0.08 + 0.04 * seed
        pred[flip] = rng.integers(0, 3 if i else 2, flip.sum())
        maps[case] = pred, ref
    return maps


def case_metrics(pred: np.ndarray, ref: np.ndarray, label: int) -> dict[str, float | int]:
    """nnU-Net's compute_metrics for one label (its ignore label unset)."""
    p, r = pred == label, ref == label
    tp, fp, fn, tn = (int(x) for x in ((p & r).sum(), (p & ~r).sum(), (~p & r).sum(),
                                       (~p & ~r).sum()))
    if tp + fp + fn == 0:
        dice = iou = math.nan
    else:
        dice, iou = 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
    return {"Dice": dice, "IoU": iou, "FP": fp, "TP": tp, "FN": fn, "TN": tn,
            "n_pred": fp + tp, "n_ref": fn + tp}


def results(maps: dict, cases: list[str], keys: dict[str, int], folder: str) -> dict:
    """compute_metrics_on_folder's result with save_summary_json's string keys."""
    per_case = [{"reference_file": f"/pre/{DATASET}/gt_segmentations/{c}.nii.gz",
                 "prediction_file": f"{folder}/validation/{c}.nii.gz",
                 "metrics": {key: case_metrics(*maps[c], label) for key, label in keys.items()}}
                for c in cases]
    means = {key: {m: float(np.nanmean([c["metrics"][key][m] for c in per_case]))
                   for m in per_case[0]["metrics"][key]} for key in keys}
    foreground = {m: float(np.mean([means[k][m] for k in keys])) for m in means[next(iter(keys))]}
    return {"foreground_mean": foreground, "mean": means, "metric_per_case": per_case}


def write_trainer(root: Path, trainer: str, seed: int, folds=range(FOLDS), dataset_json=True,
                  keys: dict[str, int] | None = None, configuration: str = "2d") -> Path:
    """``root/Dataset001_Toy/<trainer>__nnUNetPlans__<configuration>`` with the given folds'
    validation/summary.json (json.dump(sort_keys=True, indent=4): save_json's) and, with
    ``dataset_json``, the dataset.json nnU-Net copies there."""
    folder = root / DATASET / f"{trainer}__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True)
    if dataset_json:
        (folder / "dataset.json").write_text(json.dumps(
            {"channel_names": {"0": "CT"}, "labels": dict(zip(CLASSES, range(3), strict=True)),
             "numTraining": len(CASES), "file_ending": ".nii.gz"}, indent=4))
    maps = label_maps(seed)
    for k in folds:
        fold = folder / f"fold_{k}"
        nnunet_summary_path(fold).parent.mkdir(parents=True)
        summary = results(maps, CASES[k::FOLDS], keys or {"1": 1, "2": 2}, str(fold))
        with nnunet_summary_path(fold).open("w") as f:
            json.dump(summary, f, sort_keys=True, indent=4)
    return folder


@pytest.fixture
def trainers(tmp_path: Path) -> tuple[Path, Path]:
    return write_trainer(tmp_path, A, 0), write_trainer(tmp_path, B, 1)


def test_the_files_are_written_as_nnunet_writes_them(tmp_path: Path) -> None:
    evaluate = pytest.importorskip("nnunetv2.evaluation.evaluate_predictions")
    trainer = write_trainer(tmp_path, A, 0, folds=[0])
    ours = nnunet_summary_path(trainer / "fold_0")
    summary = evaluate.load_summary_json(str(ours))  # int keys, as compute_metrics returns
    assert set(summary["mean"]) == {1, 2}
    evaluate.save_summary_json(summary, str(tmp_path / "theirs.json"))
    assert (tmp_path / "theirs.json").read_text() == ours.read_text()


def test_each_case_scores_as_condseg_scores_it(tmp_path: Path) -> None:
    """Every case and class: Dice, IoU, recall, precision and their foreground means equal
    condseg's K-class metrics of the same label maps (a class in neither map: missing)."""
    trainer = write_trainer(tmp_path, A, 0)
    maps = label_maps(0)
    entry = read_nnunet(trainer)
    (evaluation,) = entry.evaluations
    assert evaluation.classes == CLASSES and sorted(evaluation.per_image) == CASES
    missing = 0
    for case, (pred, ref) in maps.items():
        expected = class_image_metrics(pred, ref, CLASSES)
        row = evaluation.per_image[case]
        for metric in (*TABLE_METRICS, *(f"{m}/{c}" for m in TABLE_METRICS for c in CLASSES[1:])):
            assert row[metric] == pytest.approx(expected[metric]), (case, metric)
            missing += row[metric] is None
    assert missing  # case 0's tumour is in neither map
    folds = [run.evaluations[0] for run in entry.pooled]
    assert [e.protocol["split"] for e in folds] == [f"folds/{k}/val" for k in range(FOLDS)]
    means = [e.metrics["dice/liver"]["mean"] for e in folds]
    assert evaluation.metrics["dice/liver"]["mean"] == pytest.approx(np.mean(means))
    assert evaluation.metrics["dice/liver"]["std"] == pytest.approx(np.std(means))


def test_two_trainers_get_the_per_class_table_and_the_paired_test(
    trainers: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    console = Console(record=True, width=250)
    result = compare(list(trainers), out_dir=out, console=console)
    column = f"{DATASET}/folds/*/val"
    assert result.labels == [f"{A} 2d", f"{B} 2d"] and result.columns == [column]
    assert result.metrics == (*TABLE_METRICS, "dice/liver", "dice/tumour")
    (stat,) = result.stats
    assert stat.label == f"{B} 2d" and stat.column == column and stat.test.n == len(CASES)
    a, b = (e.evaluations[0].per_image for e in result.entries)
    assert stat.test.mean_diff == pytest.approx(
        np.mean([b[c]["dice"] - a[c]["dice"] for c in CASES]))
    printed = console.export_text()
    for text in ("mDSC liver", "mDSC tumour", f"{B} 2d", "±", "Wilcoxon"):
        assert text in printed, text
    table = (out / "compare.csv").read_text()
    assert "mDSC liver" in table and "mDSC tumour" in table


def test_fold_folders_pair_fold_by_fold_and_pool_like_the_trainer(
    trainers: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = trainers
    result = compare([a / "fold_0", b / "fold_0", b / "fold_1"])
    assert result.columns == [f"{DATASET}/folds/0/val", f"{DATASET}/folds/1/val"]
    assert not any("selected each model" in n for n in result.notes)  # nnU-Net's final model
    (stat,) = result.stats  # fold 1 of B has other cases than A's fold 0: not paired
    assert stat.column.endswith("folds/0/val") and stat.test.n == 3
    assert any(n.startswith(f"no statistics for {B} 2d (fold_1) on {DATASET}/folds/1/val")
               for n in result.notes)
    folds = [a / f"fold_{k}" for k in range(FOLDS)] + [b / f"fold_{k}" for k in range(FOLDS)]
    pooled = compare(folds, pool=True)
    whole = compare(list(trainers))
    for got, want in zip(pooled.entries, whole.entries, strict=True):
        assert got.label == want.label and got.n_runs == want.n_runs == FOLDS
        assert got.evaluations[0].per_image == want.evaluations[0].per_image
        for metric, figures in want.evaluations[0].metrics.items():
            assert got.evaluations[0].metrics[metric] == pytest.approx(figures), metric
    assert pooled.stats[0].test == whole.stats[0].test
    again = compare(list(trainers), pool=True)  # a trainer's folds pool as its runs
    assert [e.n_runs for e in again.entries] == [FOLDS, FOLDS]
    assert again.stats[0].test == whole.stats[0].test


def test_a_trainer_with_some_folds_names_them_and_pairs_only_the_same_cases(
    tmp_path: Path
) -> None:
    a = write_trainer(tmp_path, A, 0)
    b = write_trainer(tmp_path, B, 1, folds=[0, 1, 2])
    result = compare([a, b])
    assert result.columns == [f"{DATASET}/folds/*/val", f"{DATASET}/folds/0+1+2/val"]
    assert not result.stats


def test_nnunet_beside_a_condseg_evaluation_of_other_images_is_not_paired(
    trainers: tuple[Path, Path], tmp_path: Path
) -> None:
    """Same class names, case names, dataset name and split, but condseg's own evaluation
    digests its mask files: another dataset, shown apart and never paired."""
    evaluation = write_classes_evaluation(
        tmp_path / "ours", [(0.5, 0.5)] * len(CASES), classes=CLASSES, names=CASES,
        data_root=f"/data/{DATASET}", split="folds/*/val", resolution="original",
        dataset={"root": f"/data/{DATASET}", "names": "n", "masks": "m"})
    result = compare([trainers[0], evaluation, trainers[1]])
    assert len(result.columns) == 2 and result.columns[1] == f"data/{DATASET}/folds/*/val"
    assert [s.label for s in result.stats] == [f"{B} 2d"]
    assert any("names different datasets" in n for n in result.notes)


def test_class_names_without_dataset_json_single_label_regions_and_background(
    tmp_path: Path
) -> None:
    plain = write_trainer(tmp_path, A, 0, folds=[0], dataset_json=False)
    assert read_nnunet(plain).evaluations[0].classes == ("background", "class1", "class2")
    regions = write_trainer(tmp_path, B, 0, folds=[0], keys={"(1,)": 1, "(2,)": 2})
    ours = read_nnunet(regions / "fold_0").evaluations[0]
    assert ours.classes == CLASSES
    background = write_trainer(tmp_path / "bg", A, 0, folds=[0], keys={"0": 0, "1": 1, "2": 2})
    with_background = read_nnunet(background / "fold_0").evaluations[0]  # 0 left out
    unnamed = read_nnunet(plain / "fold_0").evaluations[0].per_image
    for other in (ours, with_background):
        assert other.classes == CLASSES
        assert [list(row.values()) for row in other.per_image.values()] == [
            list(row.values()) for row in unnamed.values()]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_refusals_are_one_line_saying_what_to_do(trainers: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    a, b = trainers
    unfinished = a.parent / f"{A}__nnUNetPlans__3d_fullres" / "fold_2"
    unfinished.mkdir(parents=True)
    for given in (unfinished, unfinished.parent):
        with pytest.raises(CompareError) as exc:
            compare([given, b])
        text = _one_line(exc)
        assert "validation/summary.json" in text and "wait for the fold" in text
        assert f"nnUNetv2_train {DATASET} 3d_fullres 2 -tr {A} -p nnUNetPlans --val" in text

    summary = nnunet_summary_path(b / "fold_3")
    uneven = json.loads(summary.read_text())
    del uneven["metric_per_case"][1]["metrics"]["2"]
    for damage in (summary.read_text()[:200], "", json.dumps({"mean": {}}), json.dumps(uneven),
                   json.dumps({"metric_per_case": [{"metrics": {"1": {"Dice": 1}}}]})):
        summary.write_text(damage)
        with pytest.raises(CompareError) as exc:
            compare([a, b])
        assert f"{summary} is damaged" in _one_line(exc) and "--val" in str(exc.value)

    regions = write_trainer(tmp_path / "r", A, 0, folds=[0], keys={"(1, 2)": 1, "(2,)": 2})
    with pytest.raises(CompareError) as exc:
        compare([regions, a])
    assert "regions" in _one_line(exc) and "(1, 2)" in str(exc.value)

    (a / "fold_all").mkdir()
    with pytest.raises(CompareError) as exc:
        compare([a / "fold_all", a])
    assert "every case" in _one_line(exc)

    with pytest.raises(CompareError) as exc:  # its fold 0 twice
        compare([a, a / "fold_0"])
    assert "both give the evaluation" in _one_line(exc)

    copy = tmp_path / "copy" / DATASET / a.name
    shutil.copytree(a, copy)
    with pytest.raises(CompareError) as exc:  # one trainer's results under two paths
        compare([a, copy])
    assert "same model on the same data" in _one_line(exc)

    shutil.copytree(a / "fold_1", a / "fold_5")
    with pytest.raises(CompareError) as exc:
        compare([a, b])
    assert "validated by both fold_1 and fold_5" in _one_line(exc)
    shutil.rmtree(a / "fold_5")

    other = write_trainer(tmp_path / "o", B, 1, dataset_json=False)
    with pytest.raises(CompareError) as exc:  # class1, class2 are not liver, tumour
        compare([a, other])
    assert "classes" in _one_line(exc)


def test_the_cli_compares_nnunet_folders(trainers: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", *map(str, trainers), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "tumour" in result.output and (out / "compare.csv").is_file()
    missing = trainers[0] / "fold_9"
    missing.mkdir()
    result = runner.invoke(app, ["compare", str(missing), str(trainers[1])])
    assert result.exit_code == 2
    assert result.output.count("error:") == 1 and "nnUNetv2_train" in result.output


def test_figures_say_why_nnunet_is_not_drawn(trainers: tuple[Path, Path],
                                             tmp_path: Path) -> None:
    result = compare(list(trainers), figure_dir=tmp_path / "fig")
    assert not result.written
    assert any(n.startswith("predictions.png not written: the reference nnUNetTrainer 2d is "
                            "nnU-Net's") for n in result.notes)
    assert not any("in the figures is its first run" in n for n in result.notes)


@pytest.mark.slow
def test_nnunets_own_evaluation_reads_as_these_files(tmp_path: Path) -> None:
    """nnU-Net's compute_metrics_on_folder itself (one spawned worker, about 8 s) on the label
    maps of fold 0 as PNG: its summary.json is the one written here but for the files' paths,
    and compare reads the same scores from it."""
    evaluate = pytest.importorskip("nnunetv2.evaluation.evaluate_predictions")
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from PIL import Image

    ours = write_trainer(tmp_path / "ours", A, 0, folds=[0]) / "fold_0"
    theirs = tmp_path / "theirs" / DATASET / ours.parent.name / "fold_0"
    summary, truth = nnunet_summary_path(theirs), tmp_path / "gt"
    for folder in (summary.parent, truth):
        folder.mkdir(parents=True)
    shutil.copy(ours.parent / "dataset.json", theirs.parent)
    maps = label_maps(0)
    for case in CASES[0::FOLDS]:
        for folder, labels in zip((summary.parent, truth), maps[case], strict=True):
            Image.fromarray(labels.astype(np.uint8)).save(folder / f"{case}.png")
    evaluate.compute_metrics_on_folder(str(truth), str(summary.parent), str(summary),
                                       NaturalImage2DIO(), ".png", [1, 2], num_processes=1)

    def without_paths(path: Path) -> dict:
        recorded = json.loads(path.read_text())
        for case in recorded["metric_per_case"]:
            case["prediction_file"] = Path(case.pop("prediction_file")).name.split(".")[0]
            del case["reference_file"]
        return recorded

    assert json.dumps(without_paths(summary)) == json.dumps(without_paths(
        nnunet_summary_path(ours)))
    got, want = (read_nnunet(fold).evaluations[0] for fold in (theirs, ours))
    assert got.per_image == want.per_image and got.classes == want.classes
