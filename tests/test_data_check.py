"""check_dataset: one clear line per problem, naming the file and what to do."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from rich.console import Console

from condseg.data.check import CheckReport, check_dataset
from condseg.data.synthetic import synthesize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def synth(tmp_path: Path) -> Path:
    return synthesize(tmp_path / "ds", n_train=6, n_val=3, size=32, seed=1)


def rows_mentioning(report: CheckReport, text: str) -> list[str]:
    """Rendered table lines that mention ``text`` (the printed, user-facing form)."""
    console = Console(record=True, width=400)
    report.print(console)
    return [line for line in console.export_text().splitlines() if text in line]


def test_clean_synthetic_dataset_is_ok(synth: Path) -> None:
    report = check_dataset(synth)
    assert report.ok and report.problems == [] and report.split_sizes == {"train": 6, "val": 3}


def test_missing_mask_unreadable_image_and_size_mismatch_one_line_each(synth: Path) -> None:
    (synth / "masks" / "synth_0001.png").unlink()
    (synth / "images" / "synth_0002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cv2.imwrite(
        str(synth / "masks" / "synth_0007.png"),
        np.pad(np.ones((8, 8), np.uint8) * 255, 12)[:, 1:-1],
    )
    report = check_dataset(synth)
    assert not report.ok
    assert report.bad_names() == ["synth_0001", "synth_0002", "synth_0007"]
    by_name = {p.name: p for p in report.problems}
    assert len(report.problems) == 3 and len(by_name) == 3
    assert "no mask file" in by_name["synth_0001"].message
    assert by_name["synth_0001"].file == "masks/synth_0001.*"
    assert by_name["synth_0002"].file == "images/synth_0002.png"
    assert "cannot read image" in by_name["synth_0002"].message
    assert by_name["synth_0007"].split == "val"
    assert "32x32 but mask is 32x30" in by_name["synth_0007"].message
    for name in report.bad_names():
        assert len(rows_mentioning(report, name)) == 1
    assert rows_mentioning(report, "Training refuses to start")


def test_names_in_two_splits_and_duplicates(synth: Path) -> None:
    with (synth / "val.txt").open("a") as f:
        f.write("synth_0000\nsynth_0006\n")
    report = check_dataset(synth)
    [error] = report.errors
    assert error.name == "synth_0000" and error.split == "train, val"
    assert "train.txt and val.txt" in error.message
    [warning] = report.warnings
    assert warning.name == "synth_0006" and "2 times in val.txt" in warning.message
    assert report.bad_names() == ["synth_0000"]
    assert report.bad_names(include_warnings=True) == ["synth_0000", "synth_0006"]


def test_missing_split_file_and_unlisted_images(synth: Path) -> None:
    (synth / "val.txt").unlink()
    report = check_dataset(synth)
    [error] = report.errors
    assert error.file == "val.txt" and "not found" in error.message
    [info] = report.infos
    assert info.message.startswith("3 images are in no checked split")
    assert check_dataset(synth, splits=["train"]).errors == []


@pytest.mark.parametrize(
    ("values", "level", "text"),
    [
        (np.zeros((32, 32), np.uint8), "warning", "mask is empty"),
        (np.full((32, 32), 255, np.uint8), "warning", "entirely foreground"),
        (np.pad(np.ones((16, 16), np.uint8), 8), "error", "label map"),
        (np.pad(np.full((16, 16), 128, np.uint8), 8), "warning", "25% of mask pixels are mid-grey"),
    ],
    ids=["empty", "full", "label-map", "mid-grey"],
)
def test_mask_distribution_problems(synth: Path, values: np.ndarray, level: str, text: str) -> None:
    cv2.imwrite(str(synth / "masks" / "synth_0003.png"), values)
    report = check_dataset(synth)
    [problem] = report.problems
    assert (problem.level, problem.name, problem.file) == (
        level,
        "synth_0003",
        "masks/synth_0003.png",
    )
    assert text in problem.message


def test_ambiguous_image_names_both_files(synth: Path) -> None:
    cv2.imwrite(str(synth / "images" / "synth_0004.jpg"), np.zeros((32, 32, 3), np.uint8))
    [problem] = check_dataset(synth).problems
    assert "synth_0004.jpg" in problem.message and "synth_0004.png" in problem.message


def test_real_kvasir_subset_is_clean(tmp_path: Path) -> None:
    source = SHARED / "kvasir-seg"
    if not (source / "images").is_dir():
        pytest.skip(f"real Kvasir-SEG data not found at {source} (only on the project machines)")
    names = (source / "val.txt").read_text().split()[:8]
    for kind in ("images", "masks"):
        (tmp_path / kind).mkdir()
        for name in names:
            (tmp_path / kind / f"{name}.jpg").symlink_to(source / kind / f"{name}.jpg")
    (tmp_path / "train.txt").write_text("\n".join(names[:6]))
    (tmp_path / "val.txt").write_text("\n".join(names[6:]))
    start = time.perf_counter()
    report = check_dataset(tmp_path)
    assert report.ok and report.problems == [], report.problems
    assert time.perf_counter() - start < 10
