"""The demo's wiring (data, both stages, evaluation, predictions, summary) on a tiny budget.

How well the real demo learns and how long it takes is measured by running ``condseg demo``; this
test only checks that every part is produced and reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from condseg.demo import run_demo, trivial_mdsc

TINY = ["data.size=64", "model.options.width=16", "stages.stage1.max_epochs=1",
        "stages.stage2.max_epochs=1", "stages.stage1.limit_train_batches=1",
        "stages.stage2.limit_train_batches=1", "progress_bar=false"]


def test_demo_produces_and_reports_everything(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    result = run_demo(tmp_path / "demo", overrides=TINY, n_train=8, n_val=4, n_predict=2,
                      console=console)
    out = tmp_path / "demo"
    assert sorted(p.name for p in out.iterdir()) == ["data", "evaluation", "predictions", "run"]
    assert result.training.model_file == out / "run" / "stage2" / "model.safetensors"
    assert len(result.evaluation.rows) == 4 and 0 <= result.mdsc <= 1
    written = sorted(p.name for p in result.predictions.written)
    assert len(written) == 2 * 5 and any(n.endswith("_overlay.png") for n in written)
    assert any(n.endswith("_uc.png") for n in written)
    assert 0 < result.trivial_mdsc < 1
    text = console.export_text()
    for line in ("validation mDSC / mIoU", "trivial predictor", str(out / "predictions")):
        assert line in text
    with pytest.raises(FileExistsError, match="not empty"):
        run_demo(out, overrides=TINY)


def test_trivial_mdsc_is_the_all_foreground_dice(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name, fg in (("a", 4), ("b", 0)):
        mask = np.zeros((4, 4), np.uint8)
        mask.flat[:fg] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / f"{name}.png")
    (tmp_path / "val.txt").write_text("a\nb\n")
    # a: 2*4/(4+16) = 0.4; b: no lesion, all-foreground scores 0.
    assert trivial_mdsc(tmp_path) == pytest.approx(0.2)
