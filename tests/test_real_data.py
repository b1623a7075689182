"""Real data end to end: a narrow ConDSeg trained for a few steps of each stage on 32
Kvasir-SEG training images at 128×128, evaluated on validation images, and used to predict
at the original resolution. Skips when ../shared/data is absent."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from condseg.config import RunConfig, load_config
from condseg.data.index import find_pair
from condseg.data.reading import image_size
from condseg.data.split_files import read_split
from condseg.evaluation.evaluate import evaluate
from condseg.inference.predict import predict
from condseg.models.model_file import load_model
from condseg.training import train

pytestmark = pytest.mark.slow


def _subset(kvasir: Path, out: Path, n_train: int = 32, n_val: int = 8) -> Path:
    """A canonical dataset of links to the first Kvasir-SEG files (nothing is copied)."""
    splits = {"train": read_split(kvasir, "train")[:n_train],
              "val": read_split(kvasir, "val")[:n_val]}
    for kind in ("images", "masks"):
        (out / kind).mkdir(parents=True)
    for split, names in splits.items():
        for name in names:
            for source, kind in zip(find_pair(kvasir, name), ("images", "masks"), strict=True):
                (out / kind / source.name).symlink_to(source)
        (out / f"{split}.txt").write_text("\n".join(names) + "\n")
    return out


def _epoch_means(stage_dir: Path, column: str) -> list[float]:
    (metrics,) = stage_dir.glob("csv/version_*/metrics.csv")
    with metrics.open() as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


def real_data_config() -> RunConfig:
    """Small and from scratch (no ImageNet weights offline), in the precision stated."""
    return load_config("default", [
        "model.pretrained=false", "model.options.width=32", "model.options.encoder=resnet18",
        "data.size=128",
        "data.batch_size=8", "data.num_workers=0", "progress_bar=false", "log_every_n_steps=1",
        "precision=32",  # what the decreasing losses were seen with, on every kind of CPU
        "stages.stage1.max_epochs=4", "stages.stage1.optimizer.lr=1e-3",
        "stages.stage1.optimizer.encoder_lr=1e-3", "stages.stage2.max_epochs=4",
        "stages.stage2.optimizer.lr=1e-3", "stages.stage2.optimizer.encoder_lr=1e-4",
    ])


def test_kvasir_two_stages_evaluate_and_predict(kvasir_dir: Path, tmp_path: Path) -> None:
    root = _subset(kvasir_dir, tmp_path / "kvasir")
    result = train(real_data_config(), root, tmp_path / "run")

    stage1 = _epoch_means(tmp_path / "run" / "stage1", "train/loss_epoch")
    assert len(stage1) == 4
    assert stage1[-1] < stage1[0], f"stage-1 loss did not decrease: {stage1}"
    stage2 = _epoch_means(tmp_path / "run" / "stage2", "train/loss_epoch")
    assert len(stage2) == 4
    assert stage2[-1] < stage2[0], f"stage-2 loss did not decrease: {stage2}"

    model = load_model(result.model_file)
    assert model.meta["input_size"] == [128, 128]
    evaluation = evaluate(model, root, "val", resolution="original")
    assert [row["name"] for row in evaluation.rows] == read_split(root, "val")
    assert 0.0 <= evaluation.summary["dice"]["mean"] <= 1.0

    name = read_split(root, "val")[0]
    image_path, _ = find_pair(root, name)
    prediction = predict(model, image_path)
    assert prediction.prob.shape == image_size(image_path) != (128, 128)
    assert prediction.mask.shape == prediction.prob.shape
    assert set(prediction.maps) == {"fg", "bg", "uc"}
    assert all(m.shape == prediction.prob.shape for m in prediction.maps.values())
