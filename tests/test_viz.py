"""Overlays, heat maps, SID map files and training curves."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from condseg.viz import (
    CONTOUR_COLOR,
    OVERLAY_COLOR,
    draw_prediction_grid,
    heatmap,
    overlay,
    plot_curves,
    prediction_grid,
    save_maps,
)


def _square_mask() -> np.ndarray:
    mask = np.zeros((40, 60), bool)
    mask[10:30, 20:40] = True
    return mask


def test_overlay_tints_inside_and_outlines_the_mask() -> None:
    image = np.full((40, 60, 3), 100, np.uint8)
    out = overlay(image, _square_mask(), alpha=0.5)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert np.array_equal(out[0, 0], image[0, 0])  # outside: untouched
    expected = np.rint(0.5 * 100 + 0.5 * np.array(OVERLAY_COLOR)).astype(np.uint8)
    assert np.array_equal(out[20, 30], expected)  # inside: tinted
    assert np.array_equal(out[10, 30], CONTOUR_COLOR)  # the border: outlined
    assert np.array_equal(image, np.full((40, 60, 3), 100, np.uint8))  # input not modified


def test_overlay_follows_the_probability_when_given() -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    prob = np.zeros((40, 60), np.float32)
    prob[0, 0] = 1.0
    out = overlay(image, _square_mask(), prob, alpha=1.0)
    assert np.array_equal(out[0, 0], OVERLAY_COLOR) and np.array_equal(out[20, 30], [0, 0, 0])


def test_overlay_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="differs from image shape"):
        overlay(np.zeros((40, 61, 3), np.uint8), _square_mask())
    with pytest.raises(ValueError, match="uint8 RGB"):
        overlay(np.zeros((40, 60), np.uint8), _square_mask())


def test_heatmap_runs_from_blue_to_red() -> None:
    colours = heatmap(np.array([[0.0, 1.0, 2.0]], np.float32))
    assert colours.shape == (1, 3, 3) and colours.dtype == np.uint8
    low, high, clipped = colours[0].astype(int)
    assert low[2] > low[0] and high[0] > high[2]  # RGB order: blue at 0, red at 1
    assert np.array_equal(high, clipped)
    with pytest.raises(ValueError, match="2-D"):
        heatmap(np.zeros((2, 2, 1)))


def test_save_maps_writes_one_heat_map_per_key(tmp_path: Path) -> None:
    maps = {key: np.full((5, 7), value, np.float32) for key, value in (("fg", 1), ("uc", 0))}
    paths = save_maps(maps, tmp_path, "case")
    assert [p.name for p in paths] == ["case_fg.png", "case_uc.png"]
    written = cv2.cvtColor(cv2.imread(str(paths[0])), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, heatmap(maps["fg"]))


def test_plot_curves_from_a_lightning_log(tmp_path: Path) -> None:
    log = tmp_path / "metrics.csv"
    log.write_text(
        "epoch,step,train/loss_step,train/loss_epoch,train/beta_fg,val/loss,val/miou\n"
        "0,9,0.9,,,,\n"
        "0,9,,,,0.8,0.30\n"
        "0,9,,0.85,40,,\n"
        "1,19,0.7,,,,\n"
        "1,19,,,,0.6,nan\n"
        "1,19,,0.65,30,,\n"
    )
    out = plot_curves(log, tmp_path / "plots" / "curves.png")
    image = cv2.imread(str(out))
    assert image is not None and image.shape[1] > image.shape[0]  # two panels side by side
    from condseg.viz import _read_epoch_values

    values = _read_epoch_values(log)
    # Converted to the per-epoch table: nan dropped, epochs from 1, names, scores in percent.
    assert values["val_miou"] == {1: 30.0}
    assert values["train_loss"] == {1: 0.85, 2: 0.65} and "train_loss_step" not in values
    with pytest.raises(ValueError, match="no loss or val_"):
        bad = tmp_path / "bad.csv"
        bad.write_text("epoch,step,lr\n0,1,0.1\n")
        plot_curves(bad, tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError):
        plot_curves(tmp_path / "missing.csv", tmp_path / "x.png")


def test_prediction_grid_labels_rows_and_draws_truth_like_predictions(tmp_path: Path) -> None:
    image = np.full((40, 60, 3), 100, np.uint8)
    truth, empty = _square_mask(), np.zeros((40, 60), bool)
    names = ["case_b", "$x$"]
    fig = draw_prediction_grid(names, [image, image], [truth, truth],
                               {"net": [truth, empty]}, captions={"net": ["Dice 100", "Dice 0"]})
    rows = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_ylabel() for ax in rows[:, 0]] == ["case_b", "\\$x\\$"]  # shown as written
    assert [ax.get_title() for ax in rows[0]] == ["image", "ground truth", "net"]
    truth_cell, same = rows[0, 1], rows[0, 2]  # the prediction equals the truth
    assert len(truth_cell.images) == len(same.images) == 2  # the image and the mask's tint
    for a, b in zip(truth_cell.images, same.images, strict=True):
        assert np.array_equal(a.get_array(), b.get_array())
    outlines = [list(ax.collections) for ax in (truth_cell, same)]
    assert len(outlines[0]) == len(outlines[1]) == 1  # one vector outline each
    assert np.allclose(outlines[0][0].get_edgecolor(), outlines[1][0].get_edgecolor())
    assert np.allclose(outlines[0][0].get_edgecolor()[0][:3], np.array(CONTOUR_COLOR) / 255)
    assert len(rows[1, 2].collections) == 0  # an empty mask: no outline
    assert rows[1, 2].get_xlabel() == "Dice 0"

    out = prediction_grid(names, [image, image], [truth, truth], {"net": [truth, empty]},
                          tmp_path / "grid.png", pdf=True)
    assert out == tmp_path / "grid.png" and out.read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "grid.pdf").read_bytes().startswith(b"%PDF")
