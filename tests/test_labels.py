"""Datasets with labels (issue 24, point 1): the declaration ``labels.json``, class masks read
by value or palette index, ``data check``'s class report, ``prepare folder --labels``,
``prepare busi --classes``, ``data synth --task layers``, and the refusal of several classes by
every step that reads masks as binary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from condseg.cli import app
from condseg.config import load_config
from condseg.data.check import check_dataset
from condseg.data.labels import (
    IGNORE_ID,
    Labels,
    parse_labels_option,
    read_class_mask,
    read_labels,
    require_binary,
)
from condseg.data.masks import read_mask
from condseg.data.prepare import prepare
from condseg.data.split_files import read_split, write_split
from condseg.data.synthetic import synthesize
from condseg.errors import DataError, TrainingError
from condseg.evaluation.evaluate import evaluate
from condseg.models.registry import create_model
from condseg.training.cv import cross_validate
from condseg.training.start import check_data

runner = CliRunner()
GREY = Labels(("background", "rnfl", "gcipl", "choroid"), (0, 80, 160, 255))
# A 4x6 map of class ids 0..3, every class present.
IDS = np.array([[0, 0, 1, 1, 2, 3], [0, 1, 1, 2, 2, 3], [0, 0, 0, 3, 3, 3], [1, 2, 3, 0, 0, 0]],
               np.uint8)


def write_png(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), values)
    return path


def write_palette(path: Path, ids: np.ndarray) -> Path:
    """A palette PNG whose index i is drawn in a colour unrelated to i."""
    image = Image.fromarray(ids, "P")
    image.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30, 30, 30, 200] + [0] * 756)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def declare(root: Path, data: object) -> Path:
    path = root / "labels.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- the declaration --------------------------------------------------------------------------


def test_declaration_read_in_order_with_ignore(tmp_path: Path) -> None:
    declare(tmp_path, {"labels": {"background": 0, "rnfl": 80, "gcipl": 160}, "ignore": 255})
    labels = read_labels(tmp_path)
    assert labels == Labels(("background", "rnfl", "gcipl"), (0, 80, 160), 255)
    assert labels.foreground == 2
    assert read_labels(tmp_path / "nothing") is None  # no file: binary
    assert parse_labels_option("background=0, polyp=255") == Labels(("background", "polyp"),
                                                                    (0, 255))


@pytest.mark.parametrize(("data", "text"), [
    ({"labels": {"rnfl": 80, "background": 0}}, "first class must be \"background\""),
    ({"labels": {"background": 0}}, "at least one class"),
    ({"labels": ["background", "rnfl"]}, "at least one class"),
    ({"labels": {"background": 0, "rnfl": 0}}, "value(s) 0 declared twice"),
    ({"labels": {"background": 0, "rnfl": 80}, "ignore": 80}, "value(s) 80 declared twice"),
    ({"labels": {"background": 0, "rnfl": True}}, "the value of 'rnfl' is True"),
    ({"labels": {"background": 0, "rnfl": 70000}}, "an integer 0..65535"),
    ({"labels": {"background": 0, "rnfl": "80"}}, "the value of 'rnfl' is '80'"),
    ({"labels": {"background": 0, " rnfl": 1}}, "class name ' rnfl'"),
    # the model file's rule too (one rule): a name it would refuse after training is refused here
    ({"labels": {"background": 0, "rnfl\tlayer": 1}}, "must be non-empty and printable"),
    ({"labels": {"background": 0, "rnfl/gcl": 1}}, "',', '=' or '/'"),
    ({"labels": {"background": 0, "rnfl": 1}, "channel_names": {}}, "unknown key"),
])
def test_invalid_declaration_is_one_line_naming_the_file(
    tmp_path: Path, data: object, text: str
) -> None:
    path = declare(tmp_path, data)
    with pytest.raises(DataError) as exc:
        read_labels(tmp_path)
    message = one_line(exc)
    assert str(path) in message and text in message, message


def test_damaged_declaration_and_bad_option(tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text('{"labels": {"background": 0,')
    with pytest.raises(DataError) as exc:
        read_labels(tmp_path)
    assert "labels.json is damaged" in one_line(exc) and "docs/usage.md" in str(exc.value)
    for text, why in (("background=0,rnfl", "name=value pairs"),
                      ("background=0,rnfl=-3", "name=value pairs"),
                      ("background=0,rnfl=1,rnfl=2", "given twice"),
                      ("rnfl=1,background=0", "first class")):
        with pytest.raises(DataError) as exc:
            parse_labels_option(text)
        assert why in one_line(exc) and "--labels" in str(exc.value), text


# --- reading class masks ----------------------------------------------------------------------


def test_index_palette_and_grey_masks_read_to_the_same_ids(tmp_path: Path) -> None:
    index = write_png(tmp_path / "index.png", IDS)
    palette = write_palette(tmp_path / "palette.png", IDS)
    grey = write_png(tmp_path / "grey.png", np.array(GREY.values, np.uint8)[IDS])
    grey16 = write_png(tmp_path / "grey16.png", (np.array([0, 1000, 2000, 60000])[IDS])
                       .astype(np.uint16))
    by_index = Labels(GREY.names, (0, 1, 2, 3))
    np.testing.assert_array_equal(read_class_mask(index, by_index), IDS)
    np.testing.assert_array_equal(read_class_mask(palette, by_index), IDS)
    np.testing.assert_array_equal(read_class_mask(grey, GREY), IDS)
    np.testing.assert_array_equal(
        read_class_mask(grey16, Labels(GREY.names, (0, 1000, 2000, 60000))), IDS)
    assert read_class_mask(grey, GREY).dtype == np.uint8
    # The ignore value becomes IGNORE_ID.
    with_ignore = Labels(("background", "rnfl", "gcipl"), (0, 80, 160), ignore=255)
    ids = read_class_mask(grey, with_ignore)
    assert (ids[IDS == 3] == IGNORE_ID).all() and (ids[IDS < 3] == IDS[IDS < 3]).all()
    # read_mask, the binary reader, is unchanged: foreground from 128 up.
    np.testing.assert_array_equal(read_mask(grey), IDS >= 2)


def test_undeclared_value_and_colour_mask_refused_naming_file(tmp_path: Path) -> None:
    values = np.array(GREY.values, np.uint8)[IDS]
    values[0, 0], values[1, 0] = 7, 200
    bad = write_png(tmp_path / "bad.png", values)
    with pytest.raises(DataError) as exc:
        read_class_mask(bad, GREY)
    message = one_line(exc)
    assert str(bad) in message and "7 (1 px), 200 (1 px)" in message, message
    colour = np.zeros((4, 6, 3), np.uint8)
    colour[0, 0] = (0, 0, 255)
    with pytest.raises(DataError, match="in colour"):
        read_class_mask(write_png(tmp_path / "colour.png", colour), GREY)


# --- data check -------------------------------------------------------------------------------


@pytest.fixture
def grey_dataset(tmp_path: Path) -> Path:
    """3 train + 2 val grey masks 0/80/160/255; gcipl (160) in no val mask; one train mask has
    the undeclared value 7."""
    root = tmp_path / "grey"
    values = np.array(GREY.values, np.uint8)
    for i in range(5):
        ids = IDS.copy() if i < 3 else np.where(IDS == 2, 0, IDS)
        write_png(root / "images" / f"s{i}.png", np.full((4, 6, 3), 40 * i, np.uint8))
        mask = values[ids]
        if i == 1:
            mask[3, 5] = 7
        write_png(root / "masks" / f"s{i}.png", mask)
    write_split(root / "train.txt", ["s0", "s1", "s2"])
    write_split(root / "val.txt", ["s3", "s4"])
    declare(root, GREY.to_json())
    return root


def test_check_reports_undeclared_values_class_counts_and_absent_class(grey_dataset: Path) -> None:
    report = check_dataset(grey_dataset)
    assert report.labels == GREY
    [undeclared] = report.errors
    assert undeclared.file == "masks/s1.png" and undeclared.name == "s1"
    assert "mask values 7 (1 px) are declared by no class in labels.json" in undeclared.message
    pixels = np.bincount(IDS.ravel(), minlength=4)
    train = [(int(p) * 3, 3) for p in pixels]
    train[0] = (int(pixels[0]) * 3 - 1, 3)  # s1's background pixel made 7 is no class's
    val_ids = np.where(IDS == 2, 0, IDS)
    val = [(int(p) * 2, 2 if p else 0) for p in np.bincount(val_ids.ravel(), minlength=4)]
    assert report.classes == {"train": train, "val": val}
    [absent] = report.warnings
    assert absent.split == "val" and "class 'gcipl' (value 160) is in no image" in absent.message
    result = runner.invoke(app, ["data", "check", str(grey_dataset)], terminal_width=200)
    assert result.exit_code == 1
    assert "Classes (labels.json)" in result.output and "gcipl" in result.output
    assert f"{train[0][0]:,} / 3" in result.output


def test_binary_dataset_check_has_no_class_report(tmp_path: Path) -> None:
    root = synthesize(tmp_path / "binary", n_train=2, n_val=1, size=32)
    report = check_dataset(root)
    assert report.labels is None and report.classes == {}
    result = runner.invoke(app, ["data", "check", str(root)], terminal_width=200)
    assert result.exit_code == 0 and "Classes" not in result.output


def test_binary_declaration_the_binary_readers_would_misread(tmp_path: Path) -> None:
    """One foreground class at value 1: the binary readers (foreground from 128) see none."""
    root = tmp_path / "zero-one"
    for i in range(2):
        write_png(root / "images" / f"s{i}.png", np.zeros((4, 6, 3), np.uint8))
        write_png(root / "masks" / f"s{i}.png", (IDS > 1).astype(np.uint8))
    write_split(root / "train.txt", ["s0"])
    write_split(root / "val.txt", ["s1"])
    declare(root, {"labels": {"background": 0, "lesion": 1}})
    messages = [p.message for p in check_dataset(root).errors]
    assert len(messages) == 2 and "binary masks are foreground from 128 of 255" in messages[0]
    declare(root, {"labels": {"background": 0, "lesion": 255}})
    write_png(root / "masks" / "s0.png", (IDS > 1).astype(np.uint8) * 255)
    write_png(root / "masks" / "s1.png", (IDS > 1).astype(np.uint8) * 255)
    assert check_dataset(root, binary=True).ok  # one foreground class: binary, accepted


# --- prepare ----------------------------------------------------------------------------------


def test_prepare_folder_with_labels_writes_the_declaration(tmp_path: Path) -> None:
    values = np.array(GREY.values, np.uint8)
    for i in range(10):
        write_png(tmp_path / "in" / "images" / f"c{i}.png", np.full((4, 6, 3), i, np.uint8))
        mask = values[IDS] if i % 2 else np.zeros_like(IDS)
        if i == 9:
            mask[0, 0] = 7  # undeclared: not converted
        write_png(tmp_path / "in" / "masks" / f"c{i}_mask.png", mask)
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "prepare", "folder", str(tmp_path / "in" / "images"),
                                 str(tmp_path / "in" / "masks"), str(out), "--labels",
                                 "background=0,rnfl=80,gcipl=160,choroid=255",
                                 "--split", "0.6,0.4"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "classes: background 0, rnfl 80, gcipl 160, choroid 255" in result.output
    assert json.loads((out / "labels.json").read_text()) == GREY.to_json()
    assert sorted(read_split(out, "train") + read_split(out, "val")) == [f"c{i}" for i in
                                                                         range(9)]
    with (out / "not_converted.tsv").open() as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[1][0].endswith("c9.png") and "7 (1 px)" in rows[1][1], rows
    info = json.loads((out / "split_info.json").read_text())
    assert info["strata"] == {"empty": 5, "non-empty": 4}  # non-empty: a foreground class
    np.testing.assert_array_equal(read_class_mask(out / "masks" / "c1.png", GREY), IDS)
    assert check_dataset(out).ok
    # --labels is for folders, --classes for releases; a bad --labels is one line.
    for extra, text in ((["--labels", "background=0,x"], "name=value pairs"),
                        (["--classes"], "--classes are for releases")):
        bad = runner.invoke(app, ["data", "prepare", "folder", str(tmp_path / "in" / "images"),
                                  str(tmp_path / "in" / "masks"), str(tmp_path / "o2"), *extra])
        assert bad.exit_code == 2 and text in bad.output, bad.output
        assert not (tmp_path / "o2").exists()


def busi_tree(raw: Path) -> None:
    """BUSI's layout: class folders, '<class> (n).png' and '<class> (n)_mask[_k].png'."""
    lesion = np.zeros((8, 8), np.uint8)
    lesion[2:5, 2:5] = 255
    second = np.zeros((8, 8), np.uint8)
    second[6:8, 6:8] = 255
    for cls in ("benign", "malignant", "normal"):
        for i in range(1, 5):
            write_png(raw / cls / f"{cls} ({i}).png", np.full((8, 8), 30 * i, np.uint8))
            mask = lesion if cls != "normal" else 0 * lesion
            write_png(raw / cls / f"{cls} ({i})_mask.png", mask)
    write_png(raw / "malignant" / "malignant (1)_mask_1.png", second)


def test_busi_classes_three_classes_merged_masks_normal_background(tmp_path: Path) -> None:
    busi_tree(tmp_path / "raw" / "Dataset_BUSI_with_GT")
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "prepare", "busi", str(tmp_path / "raw"), str(out),
                                 "--classes"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert read_labels(out) == Labels(("background", "benign", "malignant"), (0, 1, 2))
    benign = read_class_mask(out / "masks" / "benign (2).png", read_labels(out))
    malignant = read_class_mask(out / "masks" / "malignant (1).png", read_labels(out))
    normal = read_class_mask(out / "masks" / "normal (3).png", read_labels(out))
    assert set(np.unique(benign)) == {0, 1} and benign[2:5, 2:5].all() and benign.sum() == 9
    assert (malignant[2:5, 2:5] == 2).all() and (malignant[6:8, 6:8] == 2).all()  # merged
    assert (malignant > 0).sum() == 13 and not normal.any()
    report = check_dataset(out)
    assert report.ok and report.classes["train"][2][1] == 3  # malignant in 3 training images
    # Without --classes BUSI stays binary; --classes on a binary release is refused.
    binary = prepare("busi", tmp_path / "raw", tmp_path / "binary")
    assert read_labels(binary) is None
    assert read_mask(binary / "masks" / "malignant (1).png").sum() == 13
    with pytest.raises(DataError, match="kvasir-seg has no classes"):
        prepare("kvasir-seg", tmp_path / "raw", tmp_path / "k", classes=True)


# --- the synthetic layers task ----------------------------------------------------------------


def test_synth_layers_ordered_bands_seeded(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "synth", str(tmp_path / "a"), "--task", "layers",
                                 "--train", "3", "--val", "2", "--size", "64"])
    assert result.exit_code == 0, result.output
    a = tmp_path / "a"
    b = synthesize(tmp_path / "b", n_train=3, n_val=2, size=64, task="layers")
    c = synthesize(tmp_path / "c", n_train=3, n_val=2, size=64, task="layers", seed=1)
    labels = read_labels(a)
    assert labels is not None and labels.names == ("background", "rnfl", "gcipl", "choroid")
    for name in read_split(a, "train") + read_split(a, "val"):
        for kind in ("images", "masks"):
            assert (a / kind / f"{name}.png").read_bytes() == (b / kind / f"{name}.png") \
                .read_bytes()
        ids = read_class_mask(a / "masks" / f"{name}.png", labels)
        assert set(np.unique(ids)) == {0, 1, 2, 3}
        rows = np.arange(64)[:, None]
        for upper, lower in ((1, 2), (2, 3)):  # every column: rnfl above gcipl above choroid
            assert (np.where(ids == upper, rows, -1).max(0)
                    < np.where(ids == lower, rows, 99).min(0)).all()
        assert ((ids == 1).any(0) & (ids == 2).any(0) & (ids == 3).any(0)).all()
        image = np.asarray(Image.open(a / "images" / f"{name}.png"))
        assert image.shape == (64, 64) and image.std() > 10  # grey, with speckle
    assert (a / "masks" / "synth_0000.png").read_bytes() != (c / "masks" / "synth_0000.png") \
        .read_bytes()
    report = check_dataset(a)
    assert report.ok and not report.warnings
    # The default task stays the binary one, and replacing a layers dataset drops its classes.
    synthesize(a, n_train=2, n_val=1, size=32, overwrite=True)
    assert read_labels(a) is None and check_dataset(a).ok
    bad = runner.invoke(app, ["data", "synth", str(tmp_path / "d"), "--task", "cells"])
    assert bad.exit_code == 2 and "unknown synthetic task 'cells'" in bad.output


# --- steps that read masks as binary refuse several classes -----------------------------------


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("layers"), n_train=4, n_val=2, size=32,
                      task="layers")


def test_evaluate_cv_and_study_check_refuse(layers: Path, tmp_path: Path) -> None:
    model = create_model("condseg", width=16)
    model.meta = {"mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [32, 32]}
    with pytest.raises(DataError, match="declares 4 classes"):
        evaluate(model, layers, split="val", out_dir=tmp_path / "eval")
    assert not (tmp_path / "eval").exists()
    # cross-validation and training take K classes (tests/test_train_classes.py); ConDSeg,
    # binary by design, refuses them, leaving nothing behind
    with pytest.raises(TrainingError, match="binary by design"):
        cross_validate(load_config("demo"), layers, tmp_path / "cv", seeds=[0, 1],
                       console=Console(quiet=True))
    assert not (tmp_path / "cv").exists()
    assert check_data(layers, load_config("demo"), Console(quiet=True)) == {"train": 4, "val": 2}
    assert check_dataset(layers).ok  # data check itself reports, never refuses


def test_ignore_value_refused_by_binary_steps(tmp_path: Path) -> None:
    root = synthesize(tmp_path / "binary", n_train=2, n_val=1, size=32)
    declare(root, {"labels": {"background": 0, "polyp": 255}, "ignore": 128})
    with pytest.raises(DataError) as exc:
        require_binary(root)
    assert "declares ignored pixels (value 128" in one_line(exc)
    declare(root, {"labels": {"background": 0, "polyp": 255}})
    assert require_binary(root) == Labels(("background", "polyp"), (0, 255))
