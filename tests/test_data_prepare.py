"""prepare(): each public release converter on a tiny fake RAW folder with the real naming."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from condseg.data.check import check_dataset
from condseg.data.masks import read_mask
from condseg.data.prepare import DATASETS, packaged_split, prepare
from condseg.data.reading import read_image
from condseg.data.split_files import read_split
from condseg.errors import DataError
from condseg.layout import DatasetDir

pipeline = importlib.import_module("condseg.data.prepare.pipeline")
SQUARE = np.pad(np.full((4, 4), 255, np.uint8), 2)  # 8x8 mask with a 4x4 foreground square


def write(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), values)


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (8, 8, 3), np.uint8)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def info(out: Path) -> dict:
    return json.loads((out / "split_info.json").read_text())


def test_every_dataset_has_a_converter_description() -> None:
    expected = {"kvasir-seg", "kvasir-sessile", "glas", "isic2016", "isic2017", "cvc-clinicdb"}
    assert set(DATASETS) == expected | {"busi"}
    assert all(spec.title and spec.sizes for spec in DATASETS.values())


@pytest.fixture(scope="module")
def kvasir_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 1000 Kvasir-SEG names (from the packaged lists) as tiny JPEGs, plus a bbox json."""
    raw = tmp_path_factory.mktemp("raw") / "Kvasir-SEG"
    names = packaged_split("kvasir-seg", "train") + packaged_split("kvasir-seg", "val")
    for name in names:
        write(raw / "images" / f"{name}.jpg", image())
        write(raw / "masks" / f"{name}.jpg", SQUARE)
    (raw / "kavsir_bboxes.json").write_text("{}")
    return raw


def test_kvasir_seg_uses_the_packaged_880_120_split(kvasir_raw: Path, tmp_path: Path) -> None:
    before = snapshot(kvasir_raw)
    out = prepare("kvasir-seg", kvasir_raw.parent, tmp_path / "out")
    assert len(read_split(out, "train")) == 880 and len(read_split(out, "val")) == 120
    assert read_split(out, "val") == packaged_split("kvasir-seg", "val")
    assert info(out)["counts"] == {"train": 880, "val": 120}
    assert len(list((out / "masks").glob("*.jpg"))) == 1000
    assert snapshot(kvasir_raw) == before  # RAW untouched


def test_kvasir_sessile_from_the_full_kvasir_seg_release(kvasir_raw: Path, tmp_path: Path) -> None:
    out = prepare("kvasir-sessile", kvasir_raw, tmp_path / "out", link=True)
    counts = {s: len(read_split(out, s)) for s in ("train", "val", "test")}
    assert counts == {"train": 156, "val": 20, "test": 20}
    assert len(list((out / "images").iterdir())) == 196  # only the listed frames
    name = read_split(out, "test")[0]
    assert (out / "images" / f"{name}.jpg").samefile(kvasir_raw / "images" / f"{name}.jpg")


def test_packaged_split_names_missing_from_raw_are_named(tmp_path: Path) -> None:
    name = packaged_split("kvasir-seg", "val")[0]
    write(tmp_path / "raw" / "images" / f"{name}.jpg", image())
    write(tmp_path / "raw" / "masks" / f"{name}.jpg", SQUARE)
    with pytest.raises(DataError, match=r"999 names of the packaged kvasir-seg split have no"):
        prepare("kvasir-seg", tmp_path / "raw", tmp_path / "out")


def test_glas_instance_masks_become_binary(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "Warwick QU Dataset (Released 2016_07_08)"
    labels = np.zeros((8, 8), np.uint8)
    labels[1:3, 1:3], labels[5:7, 4:8] = 1, 2  # two gland instances, values 1 and 2
    for name in ("train_1", "train_2", "testA_1", "testB_1"):
        write(raw / f"{name}.bmp", image())
        write(raw / f"{name}_anno.bmp", labels)
    (raw / "Grade.csv").write_text("name,grade\n")
    out = prepare("glas", tmp_path / "raw", tmp_path / "out")
    assert read_split(out, "train") == ["train_1", "train_2"]
    assert read_split(out, "val") == ["testA_1", "testB_1"]
    np.testing.assert_array_equal(read_mask(out / "masks" / "testA_1.png"), labels > 0)
    assert (out / "images" / "train_1.bmp").is_file()
    assert check_dataset(out).ok


def _isic(raw: Path, folders: dict[str, tuple[str, str]], suffix: str) -> None:
    """ISIC images in ``<data folder>/`` and masks in ``<ground-truth folder>/``."""
    for i, (data, truth) in enumerate(folders.values()):
        for j in range(2):
            name = f"ISIC_{i * 10 + j:07d}"
            write(raw / data / f"{name}.jpg", image(j))
            write(raw / truth / f"{name}{suffix}", SQUARE)
        write(raw / data / f"{name}_superpixels.png", image())  # 2017 distractor


def test_isic2016_splits_from_the_release_folders(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _isic(
        raw,
        {
            "train": (
                "ISBI2016_ISIC_Part1_Training_Data",
                "ISBI2016_ISIC_Part1_Training_GroundTruth",
            ),
            "val": ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
        },
        "_Segmentation.png",
    )
    out = prepare("isic2016", raw, tmp_path / "out")
    assert read_split(out, "train") == ["ISIC_0000000", "ISIC_0000001"]
    assert read_split(out, "val") == ["ISIC_0000010", "ISIC_0000011"]
    assert info(out)["source"].startswith("the release's own")
    assert check_dataset(out).ok


def test_isic2017_three_splits_and_flattened_fallback(tmp_path: Path) -> None:
    folders = {
        split: (f"ISIC-2017_{part}_Data", f"ISIC-2017_{part}_Part1_GroundTruth")
        for split, part in (("train", "Training"), ("val", "Validation"), ("test", "Test_v2"))
    }
    _isic(tmp_path / "raw", folders, "_segmentation.png")
    out = prepare("isic2017", tmp_path / "raw", tmp_path / "out")
    assert info(out)["counts"] == {"train": 2, "val": 2, "test": 2}
    assert read_split(out, "test") == ["ISIC_0000020", "ISIC_0000021"]
    flat = tmp_path / "flat"
    for path in (tmp_path / "raw").rglob("ISIC_*"):
        write(flat / "all" / path.name, cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
    with pytest.raises(DataError, match=r"6 usable pairs are too few.*: val would be empty"):
        prepare("isic2017", flat, tmp_path / "out_flat", seed=3)
    for i in range(30, 45):
        write(flat / "all" / f"ISIC_{i:07d}.jpg", image(i))
        write(flat / "all" / f"ISIC_{i:07d}_segmentation.png", SQUARE)
    out = prepare("isic2017", flat, tmp_path / "out_flat", seed=3)
    record = info(out)
    assert record["seed"] == 3 and record["source"].startswith("seeded random split")
    assert record["counts"] == {"train": 15, "val": 1, "test": 5}  # 2000/150/600 scaled to 21


def test_cvc_clinicdb_seeded_split_is_reproducible(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "CVC-ClinicDB"
    for i in range(1, 21):
        write(raw / "Original" / f"{i}.tif", image(i))
        write(raw / "Ground Truth" / f"{i}.tif", SQUARE)
    first = prepare("cvc-clinicdb", tmp_path / "raw", tmp_path / "a", seed=0)
    again = prepare("cvc-clinicdb", tmp_path / "raw", tmp_path / "b", seed=0)
    other = prepare("cvc-clinicdb", tmp_path / "raw", tmp_path / "c", seed=1)
    assert info(first)["counts"] == {"train": 18, "val": 2}  # 550/62 scaled to 20
    assert read_split(first, "val") == read_split(again, "val")
    assert read_split(first, "val") != read_split(other, "val")
    assert info(first)["paper_sizes"] == {"train": 550, "val": 62}
    assert check_dataset(first).ok


def test_busi_masks_are_merged_and_folds_stratified(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "Dataset_BUSI_with_GT"
    for cls, n in (("benign", 4), ("malignant", 4), ("normal", 4)):
        for i in range(1, n + 1):
            write(raw / cls / f"{cls} ({i}).png", image(i))
            write(raw / cls / f"{cls} ({i})_mask.png", SQUARE if cls != "normal" else 0 * SQUARE)
    second = np.zeros((8, 8), np.uint8)
    second[0, 0] = 255
    write(raw / "benign" / "benign (1)_mask_1.png", second)
    out = prepare("busi", tmp_path / "raw", tmp_path / "out")
    np.testing.assert_array_equal(
        read_mask(out / "masks" / "benign (1).png"), (SQUARE | second) > 0
    )
    record = info(out)
    assert record["counts"]["train"] == 9 and record["counts"]["val"] == 3
    for k in range(4):
        val = read_split(out, f"folds/{k}/val")
        assert sorted(name.split(" ")[0] for name in val) == ["benign", "malignant", "normal"]
        assert not set(val) & set(read_split(out, f"folds/{k}/train"))
    assert read_split(out, "val") == read_split(out, "folds/0/val")




def test_refuses_non_empty_out_unknown_dataset_and_empty_raw(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError, match="not an empty folder"):
        prepare("glas", tmp_path / "raw", tmp_path / "out")
    with pytest.raises(DataError, match=r"unknown dataset 'kvasir'.*kvasir-seg"):
        prepare("kvasir", tmp_path / "raw", tmp_path / "new")
    with pytest.raises(DataError, match=r"no image files found under .*raw \(expected GlaS"):
        prepare("glas", tmp_path / "raw", tmp_path / "new")


# --- public releases as they really are (issue 9, point 5) -------------------------------------


def _cvc(raw: Path, image_dir: str, mask_dir: str, n: int = 10, ext: str = ".png") -> None:
    for i in range(1, n + 1):
        write(raw / image_dir / f"{i}{ext}", image(i))
        write(raw / mask_dir / f"{i}{ext}", SQUARE)


def test_images_and_masks_folder_names_are_recognised(tmp_path: Path) -> None:
    _cvc(tmp_path / "raw" / "CVC-ClinicDB", "images", "masks")
    out = prepare("cvc-clinicdb", tmp_path / "raw", tmp_path / "out")
    assert info(out)["written"] == 10 and check_dataset(out).ok


def test_other_folder_names_are_given_with_images_and_masks(tmp_path: Path) -> None:
    _cvc(tmp_path / "raw", "img_dir", "ann_dir")
    with pytest.raises(DataError, match=r"no image files found under .*raw"):
        prepare("cvc-clinicdb", tmp_path / "raw", tmp_path / "out")
    out = prepare("cvc-clinicdb", tmp_path / "raw", tmp_path / "out", images="img_dir",
                  masks="ann_dir")
    assert info(out)["written"] == 10 and check_dataset(out).ok
    with pytest.raises(DataError, match=r"folder .*nowhere not found"):
        prepare("cvc-clinicdb", tmp_path / "raw", tmp_path / "b", images="nowhere",
                masks="ann_dir")


def test_swapped_folders_are_detected_and_swap_fixes_them(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _cvc(raw, "masks", "images")  # the photos are in masks/, the masks in images/
    with pytest.raises(DataError, match=r"images .* look like masks.*swapped\? pass --swap"):
        prepare("cvc-clinicdb", raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    out = prepare("cvc-clinicdb", raw, tmp_path / "out", swap=True)
    assert check_dataset(out).ok
    np.testing.assert_array_equal(read_mask(out / "masks" / "1.png"), SQUARE > 0)


def test_three_sample_black_is_zero_tiff_frames(tmp_path: Path) -> None:
    """CVC-ClinicDB's frames: 3-sample TIFFs tagged BlackIsZero that Pillow cannot open."""
    import tifffile

    raw = tmp_path / "raw" / "CVC-ClinicDB"
    for i in range(1, 11):
        path = raw / "Original" / f"{i}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, image(i), photometric="minisblack", planarconfig="contig")
        write(raw / "Ground Truth" / f"{i}.tif", SQUARE)
    out = prepare("cvc-clinicdb", tmp_path / "raw", tmp_path / "out")
    assert info(out)["written"] == 10 and check_dataset(out).ok
    np.testing.assert_array_equal(read_image(out / "images" / "1.tif"), image(1))


def test_unpaired_and_unreadable_files_are_reported_not_refused(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _cvc(raw, "Original", "Ground Truth")
    write(raw / "Original" / "11.png", image())  # no mask
    write(raw / "Ground Truth" / "12.png", SQUARE)  # no image
    (raw / "Original" / "13.png").write_bytes(b"")  # unreadable
    write(raw / "Ground Truth" / "13.png", SQUARE)
    out = prepare("cvc-clinicdb", raw, tmp_path / "out")
    record = info(out)
    assert record["written"] == 10 and record["not_converted"] == 3
    rows = (out / record["not_converted_list"]).read_text().splitlines()
    assert rows[0] == "file\treason"
    reasons = dict(row.split("\t") for row in rows[1:])
    assert "no mask" in reasons[str(raw / "Original" / "11.png")]
    assert "no image" in reasons[str(raw / "Ground Truth" / "12.png")]
    assert "cannot read image" in reasons[str(raw / "Original" / "13.png")]
    assert "13.png" in reasons[str(raw / "Original" / "13.png")]


def test_busi_mask_of_another_size_leaves_its_image_out(tmp_path: Path) -> None:
    """Decision: a mask is never resized to its image; the pair is left out and listed."""
    raw = tmp_path / "raw" / "Dataset_BUSI_with_GT" / "benign"
    for i in range(1, 9):
        write(raw / f"benign ({i}).png", image(i))
        write(raw / f"benign ({i})_mask.png", SQUARE)
    write(raw / "benign (2)_mask_1.png", np.zeros((6, 8), np.uint8))
    out = prepare("busi", tmp_path / "raw", tmp_path / "out")
    record = info(out)
    assert record["written"] == 7 and record["not_converted"] == 1
    assert "benign (2)" not in {n for s in ("train", "val") for n in read_split(out, s)}
    reason = DatasetDir(out).not_converted.read_text().splitlines()[1]
    assert "benign (2)_mask_1.png is 6x8 but image" in reason and "not resized" in reason


def test_a_failure_leaves_no_output_and_a_rerun_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cvc(tmp_path / "raw", "images", "masks")
    written = []

    def fail_third(sample, *args) -> None:
        written.append(sample.name)
        if len(written) == 3:
            raise OSError("No space left on device")
        original(sample, *args)

    original = pipeline._write_sample
    monkeypatch.setattr(pipeline, "_write_sample", fail_third)
    with pytest.raises(DataError, match=r"cannot convert .*images/\d+\.png: No space left"):
        prepare("cvc-clinicdb", tmp_path / "raw", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no OUT, no temporary folder
    monkeypatch.undo()
    out = prepare("cvc-clinicdb", tmp_path / "raw", tmp_path / "out")
    assert check_dataset(out).ok


def test_cli_prepare_reports_unpaired_and_refuses_swapped(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from condseg.cli import app

    _cvc(tmp_path / "raw", "images", "masks")
    write(tmp_path / "raw" / "images" / "99.png", image())
    result = CliRunner().invoke(app, ["data", "prepare", "cvc-clinicdb", str(tmp_path / "raw"),
                                      str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "1 files not converted" in result.output
    assert DatasetDir(tmp_path / "out").not_converted.name in result.output
    _cvc(tmp_path / "swapped", "masks", "images")
    result = CliRunner().invoke(app, ["data", "prepare", "cvc-clinicdb",
                                      str(tmp_path / "swapped"), str(tmp_path / "out2")])
    assert result.exit_code == 2 and "--swap" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out2").exists()
