"""Evaluation under both protocols, on a tiny dataset written in the canonical layout."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from condseg.data.dataset import read_mask
from condseg.errors import CondsegError
from condseg.evaluation.evaluate import evaluate, print_table, read_results, write_results
from condseg.evaluation.metrics import METRIC_NAMES
from condseg.models.base import ModelOutput, SegmentationModel
from condseg.models.registry import create_model

# name -> (image height, width, lesion box (y0, y1, x0, x1) or None). Sizes are 64 or 128 and
# box edges even, so resizing to the 64x64 network size and back keeps every box exact.
CASES = {
    "a": (128, 128, (32, 64, 32, 96)),
    "b": (64, 128, (11, 50, 70, 120)),
    "empty": (128, 64, None),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """White boxes on a dark textured background; masks as 0/255 PNG, images as JPEG/PNG."""
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w, box) in CASES.items():
        mask = np.zeros((h, w), np.uint8)
        if box is not None:
            y0, y1, x0, x1 = box
            mask[y0:y1, x0:x1] = 255
        image = np.where(mask[..., None] > 0, 230, rng.integers(0, 60, (h, w, 3))).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"{name}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)
    (root / "val.txt").write_text("\n".join(CASES) + "\n")
    return root


class Brightness(SegmentationModel):
    """Stand-in model whose logits mark bright pixels: exact on the dataset above."""

    input_divisor = 16
    encoder_path = None
    arch = {"name": "brightness", "options": {}}  # noqa: RUF012
    meta = {"mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [64, 64]}  # noqa: RUF012

    def __init__(self, invert: bool = False) -> None:
        super().__init__()
        self.sign = -1.0 if invert else 1.0
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, x: torch.Tensor) -> ModelOutput:
        grey = x.mean(1, keepdim=True) * 0.25 + 0.5 + self.anchor  # back to [0, 1]
        return ModelOutput(self.sign * 50 * (grey - 0.5))


@pytest.mark.parametrize("resolution", ["network", "original"])
def test_exact_model_scores_perfectly(dataset: Path, resolution: str, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    result = evaluate(Brightness(), dataset, resolution=resolution, save_masks=masks, batch_size=2)
    assert [row["name"] for row in result.rows] == list(CASES)
    for row in result.rows:
        assert row["iou"] == row["dice"] == row["recall"] == row["precision"] == 1.0
    summary = result.summary
    assert summary["iou"] == {"mean": 1.0, "std": 0.0, "n": 3, "missing": 0}
    assert summary["hd95"]["missing"] == 1 and summary["hd95"]["n"] == 2  # the empty case
    assert result.protocol["resolution"] == resolution and result.protocol["n_images"] == 3
    for name, (h, w, _) in CASES.items():
        saved = read_mask(masks / f"{name}.png")
        expected_shape = (64, 64) if resolution == "network" else (h, w)
        assert saved.shape == expected_shape
        if resolution == "original":
            assert np.array_equal(saved, read_mask(dataset / "masks" / f"{name}.png"))


def test_inverted_model_hand_computed_scores(dataset: Path) -> None:
    result = evaluate(Brightness(invert=True), dataset, resolution="original")
    rows = {row["name"]: row for row in result.rows}
    assert rows["a"]["iou"] == 0.0 and rows["a"]["recall"] == 0.0
    # Everything but the box predicted: precision 0, specificity 0, accuracy 0.
    assert rows["a"]["accuracy"] == 0.0 and rows["a"]["specificity"] == 0.0
    # Empty ground truth, everything predicted: recall 1 (nothing to find), precision 0.
    assert rows["empty"]["recall"] == 1.0 and rows["empty"]["precision"] == 0.0
    assert result.summary["iou"]["mean"] == 0.0


def test_results_files_and_table(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = evaluate(Brightness(invert=True), dataset, out_dir=out)
    with (out / "per_image.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["name", *METRIC_NAMES]
    assert [row["name"] for row in table] == list(CASES)
    empty = table[2]
    assert empty["hd95"] == "" and float(empty["recall"]) == 1.0  # missing -> empty cell
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"]["split"] == "val"
    assert summary["protocol"]["resolution"] == "network"
    assert summary["protocol"]["input_size"] == [64, 64]
    assert summary["metrics"]["recall"]["mean"] == pytest.approx(1 / 3)
    assert set(summary["metrics"]["hd95"]) == {"mean", "std", "n", "missing"}

    with pytest.raises(FileExistsError, match=r"summary\.json"):
        evaluate(Brightness(), dataset, out_dir=out)
    with pytest.raises(FileExistsError):
        write_results(result, out)

    console = Console(file=io.StringIO(), width=120)
    print_table(result, console)
    text = console.file.getvalue()
    assert "mIoU (%)" in text and "mDSC (%)" in text and "33.33" in text  # recall in %
    assert "HD95 (px)" in text


def test_the_result_carries_what_its_files_hold(dataset: Path, tmp_path: Path) -> None:
    """Callers use the returned object instead of re-reading summary.json: its means and
    execution are the file's, and read_results gives back the same object from the folder."""
    out = tmp_path / "eval"
    result = evaluate(Brightness(invert=True), dataset, out_dir=out)
    recorded = json.loads((out / "summary.json").read_text())
    assert result.means == {m: recorded["metrics"][m]["mean"] for m in METRIC_NAMES}
    execution = recorded["protocol"]["execution"]
    assert result.execution == f"{execution['device']} {execution['precision']}"
    again = read_results(out)
    assert again.means == result.means and again.execution == result.execution
    assert again.protocol == recorded["protocol"]
    assert [row["name"] for row in again.rows] == list(CASES)
    for before, after in zip(result.rows, again.rows, strict=True):
        assert {m: after[m] for m in METRIC_NAMES} == {m: before[m] for m in METRIC_NAMES}


def test_condseg_at_both_resolutions(dataset: Path) -> None:
    torch.manual_seed(0)
    model = create_model("condseg", width=16)
    model.meta = {"mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [32, 32]}
    model.train()
    for resolution in ("network", "original"):
        result = evaluate(model, dataset, resolution=resolution, batch_size=3)
        assert len(result.rows) == 3
        assert all(0.0 <= row["iou"] <= 1.0 for row in result.rows)
        assert result.protocol["model"] == "condseg"
    assert model.training  # evaluation restores the caller's mode


def test_bad_arguments(dataset: Path) -> None:
    with pytest.raises(CondsegError, match="resolution"):
        evaluate(Brightness(), dataset, resolution="full")
    with pytest.raises(CondsegError, match="input size is required"):
        evaluate(create_model("condseg-net0", encoder="resnet18"), dataset)  # no model file
