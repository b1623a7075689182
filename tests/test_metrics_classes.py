"""K-class evaluation (issue 24, point 4): per-class Dice, IoU, recall, precision, HD95 and ASSD
with their foreground means and the pixel accuracy, from class-id maps; a class absent from both
truth and prediction is missing (not 1), ignored pixels count for nothing; agreement with
MONAI's DiceMetric; the per-class records; evaluate of a K-class model end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric
from rich.console import Console
from torch import nn

from condseg.data.dataset import SegmentationDataset
from condseg.data.labels import IGNORE_ID, read_class_mask, read_labels, write_labels
from condseg.data.synthetic import synthesize
from condseg.errors import DataError, OptionError
from condseg.evaluation.evaluate import evaluate, print_table, read_results
from condseg.evaluation.metrics import (
    CLASS_METRICS,
    METRIC_NAMES,
    class_image_metrics,
    class_metric_names,
    image_metrics,
    summarize,
)
from condseg.evaluation.names import display_name, formatted
from condseg.evaluation.overlap import class_confusion, class_scores
from condseg.inference.engine import Execution
from condseg.inference.predict import predict
from condseg.layout import EvalDir
from condseg.models.base import ModelOutput, SegmentationModel
from condseg.records import read_evaluation, write_evaluation
from condseg.viz import save_png

CLASSES = ("background", "a", "b", "c")
LAYERS = ("background", "rnfl", "gcipl", "choroid")
BINARY_ONLY = ("specificity", "f2", "mae", "s_measure", "e_measure_mean", "e_measure_max",
               "e_measure_adaptive", "weighted_f")


# --------------------------------------------------------------------------- hand-computed cases


def test_hand_computed_per_class_absent_class_missing_and_ignore() -> None:
    gt = np.array([[0, 1, 1, 0],
                   [0, 1, 1, 255],
                   [2, 2, 0, 0],
                   [0, 0, 0, 0]], np.uint8)
    pred = np.array([[0, 1, 0, 0],
                     [0, 1, 1, 2],  # class 2 on an ignored pixel: counts for nothing
                     [2, 0, 0, 0],
                     [0, 0, 0, 0]], np.uint8)
    row = class_image_metrics(pred, gt, CLASSES)
    # a: truth 4 px, prediction 3 of them; b: truth 2 px, prediction 1 of them; c: nowhere.
    assert row["dice/a"] == pytest.approx(6 / 7) and row["iou/a"] == pytest.approx(3 / 4)
    assert row["recall/a"] == pytest.approx(3 / 4) and row["precision/a"] == 1.0
    assert row["dice/b"] == pytest.approx(2 / 3) and row["iou/b"] == pytest.approx(1 / 2)
    assert row["recall/b"] == pytest.approx(1 / 2) and row["precision/b"] == 1.0
    for metric in CLASS_METRICS:
        assert row[f"{metric}/c"] is None, metric  # absent from both: missing, not 1
    # The foreground means leave c out.
    assert row["dice"] == pytest.approx((6 / 7 + 2 / 3) / 2)
    assert row["iou"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert row["hd95"] == pytest.approx((row["hd95/a"] + row["hd95/b"]) / 2)
    # 15 pixels not ignored, 13 right (the two misses: one of a, one of b).
    assert row["accuracy"] == pytest.approx(13 / 15)
    assert not set(BINARY_ONLY) & set(row)
    assert list(row) == list(class_metric_names(CLASSES))
    # Whatever is predicted on the ignored pixel, nothing changes.
    for other in range(4):
        pred[1, 3] = other
        assert class_image_metrics(pred, gt, CLASSES) == row


def test_class_in_one_of_truth_and_prediction_keeps_the_binary_rule() -> None:
    gt = np.zeros((6, 6), np.uint8)
    gt[1:3, 1:3] = 1  # a only in the truth
    pred = np.zeros((6, 6), np.uint8)
    pred[4:6, 4:6] = 2  # b only in the prediction
    row = class_image_metrics(pred, gt, CLASSES[:3])
    assert (row["dice/a"], row["recall/a"], row["precision/a"]) == (0.0, 0.0, 1.0)
    assert (row["dice/b"], row["recall/b"], row["precision/b"]) == (0.0, 1.0, 0.0)
    for name in ("a", "b"):  # one of the masks empty: the distances are undefined
        assert row[f"hd95/{name}"] is None and row[f"assd/{name}"] is None
    assert row["hd95"] is None and row["assd"] is None  # no class has a distance
    assert row["dice"] == 0.0 and row["recall"] == 0.5


def test_every_pixel_ignored_leaves_every_value_missing() -> None:
    gt = np.full((3, 3), IGNORE_ID, np.uint8)
    row = class_image_metrics(np.ones((3, 3), np.uint8), gt, CLASSES)
    assert all(value is None for value in row.values()), row


def test_per_class_values_are_the_binary_metrics_of_each_class() -> None:
    """Without ignored pixels, each class's values are the binary path's on its own mask."""
    rng = np.random.default_rng(3)
    gt = _blobs(rng, 48, len(CLASSES))
    pred = np.where(rng.random(gt.shape) < 0.1, rng.integers(0, 4, gt.shape), gt).astype(np.uint8)
    row = class_image_metrics(pred, gt, CLASSES)
    for c, name in enumerate(CLASSES[1:], start=1):
        binary = image_metrics((pred == c).astype(np.float32), gt == c)
        for metric in CLASS_METRICS:
            assert row[f"{metric}/{name}"] == pytest.approx(binary[metric]), (metric, name)
    assert row["accuracy"] == pytest.approx((pred == gt).mean())


def test_ids_outside_the_classes_are_refused() -> None:
    gt = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match="predicted class ids"):
        class_image_metrics(np.full((2, 2), 4, np.uint8), gt, CLASSES)
    with pytest.raises(ValueError, match="ground-truth class ids"):
        class_image_metrics(gt, np.full((2, 2), 7, np.uint8), CLASSES)
    with pytest.raises(ValueError, match="two or more classes"):
        class_image_metrics(gt, gt, CLASSES[:1])


def test_batch_confusion_is_each_image_s_own() -> None:
    """One bincount for the batch gives each image the counts of its own pixels."""
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (5, 9, 7))
    gt[rng.random(gt.shape) < 0.1] = IGNORE_ID
    pred = rng.integers(0, 4, (5, 9, 7))
    confusion = class_confusion(torch.from_numpy(pred), torch.from_numpy(gt), 4)
    for i in range(5):
        kept = gt[i] != IGNORE_ID
        expected = np.zeros((4, 4), np.int64)
        np.add.at(expected, (gt[i][kept], pred[i][kept]), 1)
        assert np.array_equal(confusion[i].numpy(), expected)
    assert class_scores(confusion)["dice"].shape == (5, 3)


# --------------------------------------------------------------------------- MONAI's DiceMetric


def test_dice_agrees_with_monai_dice_metric_on_random_label_maps() -> None:
    """MONAI's DiceMetric(include_background=False, num_classes=K, ignore_index=255) on the same
    label maps. Absent classes: MONAI's ignore_empty=True gives NaN wherever the truth lacks the
    class, ignore_empty=False gives 1 where both lack it and 0 where only the truth does;
    condseg gives None (missing) where both lack it and 0 where only the truth does. So condseg
    equals ignore_empty=False wherever the class is present in either, and ignore_empty=True
    wherever the truth has it; its foreground mean is the mean over the classes present."""
    rng = np.random.default_rng(7)
    k, n = 5, 12
    gt = np.stack([_blobs(rng, 40, k) for _ in range(n)])
    pred = np.where(rng.random(gt.shape) < 0.15, rng.integers(0, k, gt.shape), gt)
    gt[3][gt[3] == 4] = 0   # class 4 only predicted in image 3
    gt[5][gt[5] == 3] = 0   # class 3 in neither in image 5
    pred[5][pred[5] == 3] = 0
    pred[6][pred[6] == 2] = 1  # class 2 only in the truth in image 6
    gt[rng.random(gt.shape) < 0.05] = IGNORE_ID
    pred = pred.astype(np.uint8)
    names = tuple(f"c{i}" for i in range(k))
    rows = [class_image_metrics(pred[i], gt[i], names) for i in range(n)]
    ours = np.array([[np.nan if r[f"dice/{c}"] is None else r[f"dice/{c}"] for c in names[1:]]
                     for r in rows])
    monai = {}
    for ignore_empty in (True, False):
        metric = DiceMetric(include_background=False, reduction="none", num_classes=k,
                            ignore_index=IGNORE_ID, ignore_empty=ignore_empty)
        monai[ignore_empty] = metric(torch.from_numpy(pred[:, None]).long(),
                                     torch.from_numpy(gt[:, None]).long()).numpy()
    kept = gt != IGNORE_ID
    in_truth = np.array([[(gt[i] == c).any() for c in range(1, k)] for i in range(n)])
    in_pred = np.array([[((pred[i] == c) & kept[i]).any() for c in range(1, k)]
                        for i in range(n)])
    assert (~in_truth & ~in_pred).any() and (in_pred & ~in_truth).any()
    assert (in_truth & ~in_pred).any()  # every case occurs
    present = in_truth | in_pred
    assert np.isnan(ours[~present]).all()
    np.testing.assert_allclose(ours[present], monai[False][present], rtol=1e-6)
    np.testing.assert_allclose(ours[in_truth], monai[True][in_truth], rtol=1e-6)
    assert (monai[False][~present] == 1).all() and np.isnan(monai[True][~in_truth]).all()
    means = [r["dice"] for r in rows]
    expected = [np.mean(monai[False][i][present[i]]) for i in range(n)]
    np.testing.assert_allclose(means, expected, rtol=1e-6)


# --------------------------------------------------------------------------- summary and records


def test_summary_and_records_carry_the_per_class_columns(tmp_path: Path) -> None:
    gt = np.zeros((8, 8), np.uint8)
    gt[2:5, 2:5] = 1
    rows = [{"name": "x", **class_image_metrics(gt, gt, CLASSES[:3])},
            {"name": "y", **class_image_metrics(np.zeros_like(gt), gt, CLASSES[:3])}]
    names = class_metric_names(CLASSES[:3])
    summary = summarize(rows, names)
    assert list(summary) == list(names)
    assert summary["dice/a"] == {"mean": 0.5, "std": 0.5, "n": 2, "missing": 0}
    assert summary["dice/b"] == {"mean": None, "std": None, "n": 0, "missing": 2}
    folder = EvalDir(tmp_path / "eval")
    write_evaluation(folder, names, rows, summary, {"split": "val"}, CLASSES[:3])
    recorded = json.loads(folder.summary.read_text())
    assert list(recorded) == ["protocol", "classes", "metrics"]
    assert recorded["classes"] == list(CLASSES[:3])
    with folder.per_image.open() as f:
        header = next(csv.reader(f))
    assert header == ["name", *names] and "dice/b" in header and "mae" not in header
    record = read_evaluation(folder, DataError, "redo it")
    assert record.classes == CLASSES[:3] and record.metrics == summary
    assert record.rows[1]["dice/b"] is None  # the one missing-value rule: an empty cell
    # A binary record has no classes key, read as None.
    write_evaluation(EvalDir(tmp_path / "bin"), METRIC_NAMES, [], summarize([]), {})
    assert "classes" not in json.loads(EvalDir(tmp_path / "bin").summary.read_text())
    assert read_evaluation(EvalDir(tmp_path / "bin"), DataError, "x").classes is None
    # Damaged classes are one line naming the file.
    recorded["classes"] = "background"
    folder.summary.write_text(json.dumps(recorded))
    with pytest.raises(DataError, match=r"summary\.json is damaged: its classes"):
        read_evaluation(folder, DataError, "redo it")


def test_per_class_display_names_and_units() -> None:
    assert display_name("dice/rnfl") == "mDSC rnfl" and display_name("dice") == "mDSC"
    assert formatted("dice/rnfl", 0.81234) == "81.23" and formatted("hd95/rnfl", 3.0) == "3.00"
    assert display_name("other") == "other"


# --------------------------------------------------------------------------- evaluate, end to end


class TinyClasses(SegmentationModel):
    """A K-class model of the contract (K logit maps), built here until the registered
    families take ``num_classes``: a seeded 3x3 convolution."""

    encoder_path = None

    def __init__(self, classes: tuple[str, ...] = LAYERS, size: int = 32) -> None:
        super().__init__()
        self.num_classes = len(classes)
        torch.manual_seed(0)
        self.head = nn.Conv2d(3, len(classes), 3, padding=1)
        self.meta = {"mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [size, size],
                     "classes": list(classes)}

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(self.head(x))


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("layers"), n_train=2, n_val=3, size=48,
                      task="layers")


def test_evaluate_original_resolution_writes_per_class_records_that_the_pngs_reproduce(
    layers: Path, tmp_path: Path
) -> None:
    model = TinyClasses()
    out = tmp_path / "eval"
    result = evaluate(model, layers, "val", "original", out_dir=out, save_masks=tmp_path / "m",
                      workers=0)
    names = class_metric_names(LAYERS)
    assert result.classes == LAYERS and list(result.summary) == list(names)
    assert result.protocol["threshold"] is None
    assert "argmax" in result.protocol["ground_truth"]
    with EvalDir(out).per_image.open() as f:
        assert next(csv.reader(f)) == ["name", *names]
    recorded = json.loads(EvalDir(out).summary.read_text())
    assert recorded["classes"] == list(LAYERS) and "dice/choroid" in recorded["metrics"]
    assert not set(BINARY_ONLY) & set(recorded["metrics"])
    again = read_results(out)
    assert again.classes == LAYERS and again.summary == result.summary
    # The saved masks are class ids, and the model's own argmax of predict().
    labels = read_labels(layers)
    rows = []
    for name, (image, mask) in zip(result.rows, _pairs(layers), strict=True):
        saved = np.array(_read_png(tmp_path / "m" / f"{name['name']}.png"))
        assert saved.dtype == np.uint8 and set(np.unique(saved)) <= {0, 1, 2, 3}
        own = predict(model, image, execution=Execution(precision="float32"))  # evaluate's
        assert own.prob.shape == (4, *saved.shape)
        assert np.array_equal(own.mask, saved)
        save_png(tmp_path / f"{name['name']}.png", own.mask)  # what predict would write
        written = np.array(_read_png(tmp_path / f"{name['name']}.png"))
        rows.append({"name": name["name"],
                     **class_image_metrics(written, read_class_mask(mask, labels), LAYERS)})
    assert rows == result.rows
    assert summarize(rows, names) == result.summary
    console = Console(record=True, width=200)
    print_table(result, console)
    text = console.export_text()
    for name in LAYERS[1:]:
        assert f"mDSC {name} (%)" in text


def test_evaluate_refuses_a_model_and_a_dataset_whose_classes_differ(
    layers: Path, tmp_path: Path
) -> None:
    binary = synthesize(tmp_path / "binary", n_train=1, n_val=1, size=32)
    other = synthesize(tmp_path / "other", n_train=1, n_val=2, size=32, task="layers")
    renamed = read_labels(other)
    write_labels(other, type(renamed)(("background", "rnfl", "gcipl", "sclera"),
                                      renamed.values))
    plain = TinyClasses(("background", "polyp"))
    plain.meta = {**plain.meta, "classes": None}  # a binary model's header
    cases = [
        (plain, layers, "predicts one class (binary) but dataset"),
        (TinyClasses(), binary, "predicts 4 classes (background, rnfl, gcipl, choroid) but "
                                "dataset"),
        (TinyClasses(), other, "declares 4 classes (background, rnfl, gcipl, sclera)"),
        (TinyClasses(LAYERS[:3]), layers, "predicts 3 classes"),
    ]
    for model, root, message in cases:
        with pytest.raises(DataError, match=r"\(") as exc:
            evaluate(model, root, "val", out_dir=tmp_path / "eval", workers=0)
        line = str(exc.value)
        assert "\n" not in line and message in line and str(root) in line, line
        assert "evaluate a model trained on this dataset's classes" in line
        assert not (tmp_path / "eval").exists()
    for kwargs in ({"threshold": 0.3}, {"save_probabilities": tmp_path / "p"}):
        with pytest.raises(OptionError):
            evaluate(TinyClasses(), layers, "val", out_dir=tmp_path / "eval", workers=0,
                     **kwargs)
        assert not (tmp_path / "eval").exists() and not (tmp_path / "p").exists()


def test_evaluate_network_resolution_scores_the_dataset_s_class_targets(layers: Path) -> None:
    """At the network resolution the truth is the training target (class ids, nearest)."""
    dataset = SegmentationDataset(layers, "val", size=(32, 32), mean=[0.5] * 3, std=[0.25] * 3)
    if dataset[0]["mask"].dtype != torch.int64:
        pytest.skip("the K-class SegmentationDataset (issue 24, point 2) is not here yet")
    model = TinyClasses()
    result = evaluate(model, layers, "val", "network", workers=0)
    with torch.inference_mode():
        for row, item in zip(result.rows, dataset, strict=True):
            pred = model(item["image"][None]).mask[0].argmax(0).numpy().astype(np.uint8)
            expected = class_image_metrics(pred, item["mask"][0].numpy().astype(np.uint8),
                                           LAYERS)
            assert row == {"name": item["name"], **expected}


# --------------------------------------------------------------------------- helpers


def _blobs(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    """A label map of rectangles of classes 1..k-1 over background (most classes present)."""
    ids = np.zeros((size, size), np.uint8)
    for c in range(1, k):
        top, left = rng.integers(0, size - 8, 2)
        height, width = rng.integers(4, size // 2, 2)
        ids[top:top + height, left:left + width] = c
    return ids


def _pairs(root: Path) -> list[tuple[Path, Path]]:
    return SegmentationDataset(root, "val", size=32, mean=None, std=None).pairs


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)
