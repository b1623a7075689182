"""`condseg data prepare folder`: a custom folder of images and masks, paired by name, with a
seeded stratified split or k folds (the layout `train --fold` relies on)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from condseg.cli import app
from condseg.data.check import check_dataset
from condseg.data.prepare import prepare_folder
from condseg.data.split_files import read_split
from condseg.errors import DataError

SQUARE = np.pad(np.full((4, 4), 255, np.uint8), 2)
N, N_EMPTY = 40, 10  # pairs, of which the first N_EMPTY have an empty mask


def write(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), values)


def photo(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (8, 8, 3), np.uint8)


def empty(name: str) -> bool:
    return int(name.split("_")[1]) < N_EMPTY


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """case_00..case_39 in images/ (png or jpg), masks in labels/ with assorted suffixes."""
    root = tmp_path_factory.mktemp("custom")
    suffixes = ["", "_mask", "_segmentation", "-seg", "_GT", "_label"]
    for i in range(N):
        name = f"case_{i:02d}"
        write(root / "images" / f"{name}.{'jpg' if i % 3 else 'png'}", photo(i))
        mask = SQUARE * 0 if empty(name) else SQUARE
        write(root / "labels" / f"{name}{suffixes[i % len(suffixes)]}.png", mask)
    return root


def info(out: Path) -> dict:
    return json.loads((out / "split_info.json").read_text())


def names(out: Path, split: str) -> set[str]:
    return set(read_split(out, split))


def test_split_pairs_by_stem_and_reports_suffixes(folder: Path, tmp_path: Path) -> None:
    out = prepare_folder(folder / "images", folder / "labels", tmp_path / "out", seed=1)
    record = info(out)
    assert record["counts"] == {"train": 32, "val": 4, "test": 4}
    assert record["mask_suffixes"] == {"(none)": 7, "-seg": 7, "_gt": 6, "_label": 6,
                                       "_mask": 7, "_segmentation": 7}
    assert record["strata"] == {"empty": N_EMPTY, "non-empty": N - N_EMPTY}
    assert record["not_converted"] == 0 and record["seed"] == 1
    splits = [names(out, s) for s in ("train", "val", "test")]
    assert set.union(*splits) == {f"case_{i:02d}" for i in range(N)}
    assert sum(map(len, splits)) == N  # disjoint
    assert [sum(map(empty, s)) for s in splits] == [8, 1, 1]  # stratified: a quarter each
    assert (out / "masks" / "case_01.png").is_file()  # the mask takes its image's name
    assert check_dataset(out).ok
    again = prepare_folder(folder / "images", folder / "labels", tmp_path / "again", seed=1)
    other = prepare_folder(folder / "images", folder / "labels", tmp_path / "other", seed=2)
    assert names(again, "val") == names(out, "val") != names(other, "val")


def test_folds_are_disjoint_cover_stratified_and_seeded(folder: Path, tmp_path: Path) -> None:
    out = prepare_folder(folder / "images", folder / "labels", tmp_path / "out", folds=5,
                         test=0.1)
    test = names(out, "test")
    assert len(test) == 4 and sum(map(empty, test)) == 1
    vals = [names(out, f"folds/{k}/val") for k in range(5)]
    rest = {f"case_{i:02d}" for i in range(N)} - test
    assert set.union(*vals) == rest and sum(map(len, vals)) == len(rest)  # a partition
    for k, val in enumerate(vals):
        assert names(out, f"folds/{k}/train") == rest - val
        assert sum(map(empty, val)) in (1, 2)  # 9 empty masks over 5 folds
    assert not (out / "folds" / "5").exists()
    assert read_split(out, "train") == read_split(out, "folds/0/train")
    assert read_split(out, "val") == read_split(out, "folds/0/val")
    record = info(out)
    assert record["folds"] == 5 and record["test"] == 0.1
    assert check_dataset(out, ["folds/3/train", "folds/3/val", "test"]).ok
    again = prepare_folder(folder / "images", folder / "labels", tmp_path / "again", folds=5,
                           test=0.1)
    assert all(names(again, f"folds/{k}/val") == vals[k] for k in range(5))
    no_test = prepare_folder(folder / "images", folder / "labels", tmp_path / "all", folds=4)
    assert not (no_test / "test.txt").exists()
    assert set.union(*(names(no_test, f"folds/{k}/val") for k in range(4))) == rest | test


def test_one_folder_needs_a_suffix_and_bad_masks_are_reported(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    for i in range(10):
        write(mixed / f"scan {i}.png", photo(i))
        write(mixed / f"scan {i}_mask.png", SQUARE)
    write(mixed / "scan 3_mask.png", SQUARE // 255)  # a 0/1 label map
    write(mixed / "lonely.png", photo(0))
    out = prepare_folder(mixed, mixed, tmp_path / "out", split=[0.8, 0.2])
    record = info(out)
    assert record["written"] == 9 and record["counts"] == {"train": 7, "val": 2}
    reasons = (out / record["not_converted_list"]).read_text()
    assert "scan 3_mask.png: mask values go only up to 1" in reasons
    assert "lonely.png\tno mask for this image" in reasons


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"split": [0.7, 0.2]}, r"--split takes 2 or 3 positive fractions.*0\.7,0\.2"),
        ({"split": [0.8, 0.2], "folds": 5}, "either --split or --folds"),
        ({"test": 0.2}, "--test goes with --folds"),
        ({"folds": 1}, "at least 2 folds"),
        ({"folds": 41}, r"40 usable pairs are too few.*folds/40/val would be empty"),
    ],
)
def test_bad_split_options_are_refused(folder: Path, tmp_path: Path, options, message) -> None:
    with pytest.raises(DataError, match=message):
        prepare_folder(folder / "images", folder / "labels", tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_cli_folder_with_folds(folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "prepare", "folder", str(folder / "images"),
                                 str(folder / "labels"), str(out), "--folds", "3", "--test",
                                 "0.25", "--seed", "7"])
    assert result.exit_code == 0, result.output
    assert "train 20, val 10, test 10" in result.output and "_segmentation 7" in result.output
    assert info(out)["seed"] == 7 and (out / "folds" / "2" / "val.txt").is_file()
    result = runner.invoke(app, ["data", "prepare", "folder", str(folder / "images"), str(out)])
    assert result.exit_code == 2 and "folder IMAGES MASKS OUT" in result.output
    result = runner.invoke(app, ["data", "prepare", "folder", str(folder / "images"),
                                 str(folder / "labels"), str(tmp_path / "x"), "--split", "a,b"])
    assert result.exit_code == 2 and "--split takes fractions" in result.output
