"""Per-image metrics: hand-computed cases, empty-mask conventions, agreement with the libraries."""

from __future__ import annotations

import math
import warnings

import numpy as np
import py_sod_metrics as sod
import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

from condseg.evaluation.metrics import METRIC_NAMES, image_metrics, summarize
from condseg.evaluation.overlap import overlap_scores

OVERLAP = ("iou", "dice", "recall", "precision", "f2")


def random_case(seed: int, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A blob ground truth and a noisy, shifted, soft prediction of it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(10, size - 10, 2)
    r = rng.uniform(4, 9)
    gt = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    dy, dx = rng.integers(-3, 4, 2)
    soft = np.roll(gt, (dy, dx), (0, 1)) * 0.7 + rng.uniform(0, 0.35, gt.shape)
    return np.clip(soft, 0, 1), gt


CASES = [random_case(seed) for seed in range(5)]


def test_keys_and_order() -> None:
    assert METRIC_NAMES[:4] == ("iou", "dice", "recall", "precision")
    assert len(set(METRIC_NAMES)) == len(METRIC_NAMES) == 15
    assert tuple(image_metrics(*CASES[0])) == METRIC_NAMES


def test_confusion_metrics_by_hand() -> None:
    prob = np.array([[0.9, 0.5, 0.7], [0.1, 0.49, 0.0]])  # 0.5 counts as foreground
    gt = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    # pred = [[1,1,1],[0,0,0]] → tp 2, fp 1, fn 1, tn 2
    m = image_metrics(prob, gt)
    assert m["iou"] == pytest.approx(2 / 4)  # tp/(tp+fp+fn)
    assert m["dice"] == pytest.approx(4 / 6)  # 2tp/(2tp+fp+fn)
    assert m["recall"] == pytest.approx(2 / 3)  # tp/(tp+fn)
    assert m["precision"] == pytest.approx(2 / 3)  # tp/(tp+fp)
    assert m["specificity"] == pytest.approx(2 / 3)  # tn/(tn+fp)
    assert m["accuracy"] == pytest.approx(4 / 6)  # (tp+tn)/n
    assert m["f2"] == pytest.approx(10 / 15)  # 5tp/(5tp+4fn+fp)
    assert image_metrics(prob, gt, threshold=0.8)["iou"] == pytest.approx(1 / 3)


def test_mae_by_hand() -> None:
    # 8-bit values 0, 51, 153, 255 span [0, 1], so min-max normalisation leaves them as they are:
    # |0 − 0| + |0.2 − 0| + |0.6 − 1| + |1 − 1| = 0.6 → MAE 0.15
    prob = np.array([[0.0, 0.2], [0.6, 1.0]])
    gt = np.array([[0, 0], [1, 1]], dtype=bool)
    m = image_metrics(prob, gt)
    assert m["mae"] == pytest.approx(0.15)
    # The foreground centroid (row 1, col 0.5 → 0) leaves S-measure an empty, zero-weight
    # quadrant; pysodmetrics returns NaN there, which is reported as missing.
    assert m["s_measure"] is None


def test_distances_by_hand() -> None:
    # Two single pixels 3 rows and 4 columns apart: every surface distance is 5.
    gt = np.zeros((8, 8), dtype=bool)
    gt[1, 1] = True
    prob = np.zeros((8, 8))
    prob[4, 5] = 1.0
    m = image_metrics(prob, gt)
    assert m["hd95"] == pytest.approx(5.0)
    assert m["assd"] == pytest.approx(5.0)
    # A 3x3 square against its centre pixel: gt edge = the 8 ring pixels (at 1 or √2 from the
    # centre), pred edge = the centre. ASSD = (1 + 4·1 + 4·√2)/9; HD95 = √2 (the ring side).
    gt = np.zeros((8, 8), dtype=bool)
    gt[2:5, 2:5] = True
    prob = np.zeros((8, 8))
    prob[3, 3] = 1.0
    m = image_metrics(prob, gt)
    assert m["assd"] == pytest.approx((5 + 4 * np.sqrt(2)) / 9, rel=1e-6)
    assert m["hd95"] == pytest.approx(np.sqrt(2), rel=1e-6)


def test_both_empty_scores_one_and_distances_missing() -> None:
    m = image_metrics(np.full((6, 6), 0.2), np.zeros((6, 6), dtype=bool))
    for name in (*OVERLAP, "specificity", "accuracy"):
        assert m[name] == 1.0, name
    assert m["hd95"] is None and m["assd"] is None


def test_empty_gt_nonempty_prediction() -> None:
    prob = np.zeros((4, 4))
    prob[0, :2] = 0.9  # 2 false positives, 14 true negatives
    m = image_metrics(prob, np.zeros((4, 4), dtype=bool))
    assert m["recall"] == 1.0  # no foreground to find: 0/0
    assert (m["precision"], m["iou"], m["dice"], m["f2"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["specificity"] == pytest.approx(14 / 16)
    assert m["hd95"] is None and m["assd"] is None


def test_nonempty_gt_empty_prediction() -> None:
    gt = np.zeros((4, 4), dtype=bool)
    gt[1:3, 1:3] = True
    m = image_metrics(np.full((4, 4), 0.1), gt)
    assert m["precision"] == 1.0  # nothing claimed: 0/0
    assert (m["recall"], m["iou"], m["dice"], m["f2"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["accuracy"] == pytest.approx(12 / 16)
    assert m["hd95"] is None and m["assd"] is None


def test_all_foreground() -> None:
    gt = np.ones((5, 5), dtype=bool)
    m = image_metrics(np.full((5, 5), 0.8), gt)
    for name in (*OVERLAP, "specificity", "accuracy"):
        assert m[name] == 1.0, name  # specificity: no background, 0/0
    assert m["hd95"] == 0.0 and m["assd"] == 0.0


def test_sod_metrics_agree_with_pysodmetrics_accumulators() -> None:
    rows = [image_metrics(prob, gt) for prob, gt in CASES]
    mae, sm, em, wfm = sod.MAE(), sod.Smeasure(), sod.Emeasure(), sod.WeightedFmeasure()
    for prob, gt in CASES:
        for evaluator in (mae, sm, em, wfm):
            evaluator.step(np.round(prob * 255).astype(np.uint8), gt.astype(np.uint8) * 255)
    mean = {k: np.mean([r[k] for r in rows]) for k in METRIC_NAMES}
    assert mean["mae"] == pytest.approx(mae.get_results()["mae"], rel=1e-12)
    assert mean["s_measure"] == pytest.approx(sm.get_results()["sm"], rel=1e-12)
    assert mean["weighted_f"] == pytest.approx(wfm.get_results()["wfm"], rel=1e-12)
    assert mean["e_measure_adaptive"] == pytest.approx(em.get_results()["em"]["adp"], rel=1e-12)
    # The accumulated curve is the mean of the per-image curves, so its mean is linear too.
    assert mean["e_measure_mean"] == pytest.approx(em.get_results()["em"]["curve"].mean())
    # max-E is per image: equal to an accumulator that saw that image alone.
    for (prob, gt), row in zip(CASES, rows, strict=True):
        single = sod.Emeasure()
        single.step(np.round(prob * 255).astype(np.uint8), gt.astype(np.uint8) * 255)
        assert row["e_measure_max"] == pytest.approx(single.get_results()["em"]["curve"].max())
    # Sanity: these are not constants.
    assert len({round(r["s_measure"], 6) for r in rows}) == len(rows)


def test_distances_agree_with_monai() -> None:
    for prob, gt in CASES:
        row = image_metrics(prob, gt)
        pred = torch.from_numpy(prob >= 0.5)[None, None]
        y = torch.from_numpy(gt)[None, None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            hd95 = compute_hausdorff_distance(pred, y, include_background=True, percentile=95)
            assd = compute_average_surface_distance(
                pred, y, include_background=True, symmetric=True
            )
        assert row["hd95"] == pytest.approx(hd95.item(), rel=1e-6)
        assert row["assd"] == pytest.approx(assd.item(), rel=1e-6)
        assert row["hd95"] > 0


def test_summarize_counts_missing() -> None:
    rows = [
        {"name": "a", "iou": 0.5, "hd95": 2.0},
        {"name": "b", "iou": 1.0, "hd95": None},
        {"name": "c", "iou": 0.0, "hd95": 4.0},
    ]
    s = summarize(rows)
    assert s["iou"] == {"mean": 0.5, "std": pytest.approx(np.sqrt(1 / 6)), "n": 3, "missing": 0}
    assert s["hd95"] == {"mean": 3.0, "std": 1.0, "n": 2, "missing": 1}
    assert s["assd"] == {"mean": None, "std": None, "n": 0, "missing": 3}
    assert tuple(s) == METRIC_NAMES


def test_summarize_real_rows() -> None:
    rows = [image_metrics(*CASES[0]), image_metrics(np.zeros((4, 4)), np.zeros((4, 4), bool))]
    s = summarize(rows)
    assert s["iou"]["n"] == 2 and s["iou"]["mean"] == pytest.approx((rows[0]["iou"] + 1) / 2)
    assert (s["hd95"]["n"], s["hd95"]["missing"]) == (1, 1)
    assert s["hd95"]["mean"] == pytest.approx(rows[0]["hd95"])


@pytest.mark.parametrize(
    ("prob", "gt", "message"),
    [
        (np.zeros((4, 4)), np.zeros((4, 5), bool), "same shape"),
        (np.full((4, 4), 1.5), np.zeros((4, 4), bool), r"in \[0, 1\]"),
        (np.full((4, 4), np.nan), np.zeros((4, 4), bool), "finite"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), bool), "float"),
        (np.zeros((4, 4)), np.full((4, 4), 255, np.uint8), "binarise"),
    ],
)
def test_bad_input_is_reported(prob: np.ndarray, gt: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        image_metrics(prob, gt)


def test_gt_as_zero_one_integers_is_accepted() -> None:
    prob, gt = CASES[1]
    assert image_metrics(prob, gt.astype(np.uint8)) == image_metrics(prob, gt)


def test_overlap_scores_per_image_with_empty_masks() -> None:
    """The one IoU/Dice definition training's validation and the evaluation share."""
    pred = torch.zeros(3, 1, 2, 2, dtype=torch.bool)
    gt = torch.zeros(3, 1, 2, 2, dtype=torch.bool)
    pred[0, 0, 0, :] = True  # predicts 2 pixels, truth 1 of them + 1 more
    gt[0, 0, 0, 0] = gt[0, 0, 1, 1] = True
    pred[1, 0, 0, 0] = True  # predicts 1 pixel, empty truth; image 2: both empty
    scores = overlap_scores(pred, gt)
    assert scores["iou"].tolist() == pytest.approx([1 / 3, 0.0, 1.0])
    assert scores["dice"].tolist() == pytest.approx([0.5, 0.0, 1.0])
    assert scores["recall"].tolist() == pytest.approx([0.5, 1.0, 1.0])
    assert scores["precision"].tolist() == pytest.approx([0.5, 0.0, 1.0])


TINY_IMAGES = {
    "1x1 hit": ([[0.9]], [[1]]),
    "1x1 background": ([[0.1]], [[0]]),
    "1x1 miss": ([[0.9]], [[0]]),
    "1x1 empty": ([[0.0]], [[0]]),
    "1x5": ([[0.9, 0.1, 0.2, 0.8, 0.6]], [[1, 0, 0, 1, 0]]),
    "5x1": ([[0.9], [0.1], [0.2], [0.8], [0.6]], [[1], [0], [0], [1], [0]]),
    "2x2": ([[0.9, 0.1], [0.2, 0.8]], [[1, 0], [0, 1]]),
    "2x2 all empty": ([[0.0, 0.0], [0.0, 0.0]], [[0, 0], [0, 0]]),
    "2x2 all full": ([[1.0, 1.0], [1.0, 1.0]], [[1, 1], [1, 1]]),
    "3x3 full vs empty": ([[1.0] * 3] * 3, [[0] * 3] * 3),
}


@pytest.mark.parametrize("case", TINY_IMAGES)
def test_metrics_of_tiny_images_are_finite_and_in_range(case: str) -> None:
    """A 1×1 image once gave an E-measure of 1e15 (pysodmetrics divides by N − 1 + ε)."""
    prob, gt = (np.array(a, dtype=float) for a in TINY_IMAGES[case])
    m = image_metrics(prob, gt.astype(bool))
    n = prob.size
    for name, value in m.items():
        assert value is None or math.isfinite(value), (name, value)
    for name in (*OVERLAP, "specificity", "accuracy", "mae", "s_measure", "weighted_f"):
        assert m[name] is None or 0 <= m[name] <= 1, (name, m[name])
    for name in ("e_measure_mean", "e_measure_max", "e_measure_adaptive"):
        if n == 1:  # N − 1 = 0: undefined under the toolboxes' convention, so missing
            assert m[name] is None
        else:
            assert 0 <= m[name] <= n / (n - 1) + 1e-9, (name, m[name])
    assert summarize([m])["e_measure_mean"]["missing"] == (1 if n == 1 else 0)


def test_one_display_name_and_format_per_metric() -> None:
    """Every metric has its display name and unit in one table; overlap scores print in %."""
    from condseg.evaluation.names import (
        DISPLAY,
        MISSING,
        TABLE_METRICS,
        display_name,
        formatted,
        percent,
    )

    assert list(DISPLAY) == list(METRIC_NAMES)
    assert [display_name(m) for m in TABLE_METRICS] == ["mIoU", "mDSC", "Recall", "Precision"]
    assert percent(0.81234) == "81.23" and percent(None) == MISSING == "—"
    assert formatted("dice", 0.5) == "50.00" and formatted("hd95", 3.14159) == "3.14"
    assert formatted("mae", 0.123456) == "0.1235" and formatted("assd", None) == MISSING
    assert display_name("val_loss") == "val_loss"  # not a metric: as written
