"""A corpus of broken and unusual files, generated here, through `data check` (library and CLI)
and training start-up: every problem reported by file, nothing dropped, no traceback."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from condseg import cli
from condseg.data.check import CheckReport, check_dataset
from condseg.data.dataset import SegmentationDataset
from condseg.data.index import image_files
from condseg.data.masks import read_mask
from condseg.data.reading import _read_pillow, _read_tifffile, image_size, read_image
from condseg.errors import CondsegError, DataError

H, W = 24, 32
RNG = np.random.default_rng(0)
PHOTO = RNG.integers(0, 256, (H, W, 3), np.uint8)
SQUARE = np.zeros((H, W), np.uint8)
SQUARE[6:18, 8:24] = 255

OK = ["plain", "grey", "rgba", "palette", "exif", "mask16", "#hash", "with space", "naïve-ü"]
WARNINGS = {
    "empty": "mask is empty",
    "full": "entirely foreground",
    "grey-levels": "mid-grey",
    "twice": "listed 2 times in val.txt",
}
ERRORS = {  # name: (file column, text of the message)
    "truncated": ("images/truncated.jpg", "cannot read image"),
    "zero-byte": ("images/zero-byte.png", "cannot read image"),
    "text": ("images/text.png", "cannot read image"),
    "other-size": ("masks/other-size.png", "image is 24x32 but mask is 20x20"),
    "no-mask": ("masks/no-mask.*", "no mask file"),
    "both": ("", "listed in train.txt and val.txt"),
    "bomb": ("images/bomb.png", "decompression bomb"),
    "huge": ("images/huge.png", "144,000,000 pixels, more than the limit of 50,000,000"),
    "loop": ("images/loop.png", "is a symbolic link loop"),
    "label-map": ("masks/label-map.png", "label map"),
    "[bold]broken": ("images/[bold]broken.*", "no image file"),
}


def blank_png(path: Path, side: int) -> None:
    """A valid all-black 1-bit PNG of side x side pixels: a few kB that decode to side**2."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    rows = bytes(1 + (side + 7) // 8) * side
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b""))


def save(path: Path, values: np.ndarray, **options: object) -> None:
    Image.fromarray(values).save(path, **options)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    for name in [*OK, *WARNINGS, *ERRORS]:
        if name != "no-mask":
            cv2.imwrite(str(masks / f"{name}.png"), SQUARE)
        if name not in ("truncated", "zero-byte", "text", "bomb", "huge", "loop", "[bold]broken"):
            save(images / f"{name}.png", PHOTO)
    save(images / "grey.png", PHOTO[:, :, 0])
    save(images / "rgba.png", np.dstack([PHOTO, np.full((H, W), 128, np.uint8)]))
    Image.fromarray(PHOTO).convert("P").save(images / "palette.png")
    (images / "exif.png").unlink()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored W x H, displayed rotated by 90 degrees: H x W like its mask
    save(images / "exif.jpg", np.ascontiguousarray(np.rot90(PHOTO)), exif=exif)
    cv2.imwrite(str(masks / "mask16.png"), SQUARE.astype(np.uint16) * 257)
    cv2.imwrite(str(masks / "empty.png"), SQUARE * 0)
    cv2.imwrite(str(masks / "full.png"), SQUARE * 0 + 255)
    cv2.imwrite(str(masks / "grey-levels.png"), np.tile(np.arange(W, dtype=np.uint8) * 8, (H, 1)))
    cv2.imwrite(str(masks / "label-map.png"), SQUARE // 255)
    cv2.imwrite(str(masks / "other-size.png"), SQUARE[:20, :20])
    jpeg = cv2.imencode(".jpg", PHOTO)[1].tobytes()
    (images / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (images / "zero-byte.png").write_bytes(b"")
    (images / "text.png").write_text("this is not an image\n")
    blank_png(images / "bomb.png", 20_000)  # 400 MP: above twice Pillow's own limit
    blank_png(images / "huge.png", 12_000)  # 144 MP: only ours refuses it
    (images / "loop.png").symlink_to("loop.png")
    train = [*OK, *WARNINGS, *ERRORS]
    train.remove("twice")
    text = "\r\n".join(train[:8]) + "\r\n\r\n  \r\n" + "\r\n".join(train[8:]) + "\r\n"
    (root / "train.txt").write_text("\ufeff" + text, encoding="utf-8", newline="")
    (root / "val.txt").write_text("twice\nboth\ntwice\n", encoding="utf-8")
    (root / "small.txt").write_text("plain\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def report(corpus: Path) -> CheckReport:
    return check_dataset(corpus)


def test_every_name_is_read_none_dropped(report: CheckReport) -> None:
    assert report.split_sizes == {"train": len(OK) + len(WARNINGS) - 1 + len(ERRORS), "val": 3}
    assert not report.infos  # every image file is listed in a split


def test_each_error_is_one_row_naming_its_file(report: CheckReport) -> None:
    assert {p.name for p in report.errors} == set(ERRORS)
    for name, (file, text) in ERRORS.items():
        [problem] = [p for p in report.errors if p.name == name]
        assert (problem.file or "") == file and text in problem.message, problem


def test_warnings_do_not_block_and_usable_files_pass(report: CheckReport) -> None:
    assert {p.name: p.level for p in report.warnings} == dict.fromkeys(WARNINGS, "warning")
    for name, text in WARNINGS.items():
        assert any(text in p.message for p in report.warnings if p.name == name)
    assert not [p for p in report.problems if p.name in OK]


def test_pixel_limit_is_a_parameter(corpus: Path) -> None:
    errors = check_dataset(corpus, ["small"], max_pixels=100).errors
    assert [p.file for p in errors] == ["images/plain.png", "masks/plain.png"]
    assert all("768 pixels, more than the limit of 100" in p.message for p in errors)
    assert "--max-pixels" in errors[0].message and "data.max_pixels" in errors[0].message
    with pytest.raises(DataError, match=r"plain\.png has 768 pixels"):
        SegmentationDataset(corpus, ["plain"], size=16, mean=None, std=None, max_pixels=100)[0]
    assert check_dataset(corpus, ["small"], max_pixels=768).ok


def test_cli_check_reports_every_file_without_traceback(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli.console, "width", 300)
    result = CliRunner().invoke(cli.app, ["data", "check", str(corpus)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    rows = [line for line in result.output.splitlines() if re.match(r"^│ error", line)]
    assert len(rows) == len(ERRORS)
    for name in ERRORS:
        assert sum(f"│ {name} " in row for row in rows) == 1, name  # "[bold]" printed as is
    limited = CliRunner().invoke(cli.app, ["data", "check", str(corpus), "--split", "small",
                                           "--max-pixels", "100"])
    assert limited.exit_code == 1 and "768 pixels" in limited.output


def test_training_refuses_before_creating_the_run(corpus: Path, tmp_path: Path) -> None:
    from condseg.config import load_config
    from condseg.training import train

    console = Console(record=True, width=300)
    with pytest.raises(CondsegError, match=rf"{len(ERRORS)} error\(s\)"):
        train(load_config("demo"), corpus, tmp_path / "run", console=console)
    assert not (tmp_path / "run").exists()
    printed = console.export_text()
    assert all(name in printed for name in ERRORS)


def test_image_files_keep_what_cannot_be_read(corpus: Path) -> None:
    """What predict lists from a folder: the looping link is there, and reading it says why."""
    files = image_files(corpus / "images")
    assert corpus / "images" / "loop.png" in files and corpus / "images" / "exif.jpg" in files
    with pytest.raises(DataError, match=r"loop\.png.*symbolic link loop"):
        read_image(corpus / "images" / "loop.png")
    np.testing.assert_array_equal(read_image(corpus / "images" / "exif.jpg").shape, (H, W, 3))


def test_evaluate_refuses_a_broken_split_and_takes_the_usable_one(
    corpus: Path, tmp_path: Path
) -> None:
    """`evaluate` applies `data check`: a broken entry never passes silently; the usable files
    (every unusual-but-valid format, the name starting with #, spaces, non-ASCII) evaluate."""
    from condseg.evaluation.evaluate import evaluate
    from condseg.models.registry import create_model

    model = create_model("condseg-net0", encoder="resnet18")
    model.meta = {"mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [32, 32]}
    with pytest.raises(DataError, match=r"split 'train' .* error\(s\), the first: .*data check"):
        evaluate(model, corpus, split="train")
    (corpus / "usable.txt").write_text("\n".join(OK) + "\n", encoding="utf-8")
    for resolution in ("network", "original"):
        result = evaluate(model, corpus, split="usable", resolution=resolution)
        assert [row["name"] for row in result.rows] == OK
    runner = CliRunner()
    model_file = tmp_path / "m.safetensors"
    from condseg.models.model_file import save_model

    save_model(model_file, model, mean=[0.5] * 3, std=[0.25] * 3, input_size=32)
    out = runner.invoke(cli.app, ["evaluate", str(model_file), "--data", str(corpus),
                                  "--split", "train"])
    assert out.exit_code == 2 and "Traceback" not in out.output and "data check" in out.output


def test_predict_reports_every_unusable_file_and_writes_the_rest(
    corpus: Path, tmp_path: Path
) -> None:
    from condseg.inference.predict import predict_files
    from condseg.models.registry import create_model

    model = create_model("condseg-net0", encoder="resnet18")
    model.meta = {"mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [32, 32]}
    report = predict_files(model, [corpus / "images"], tmp_path / "out")
    failed = {path.name: reason for path, reason in report.failed}
    assert set(failed) == {"truncated.jpg", "zero-byte.png", "text.png", "bomb.png", "huge.png",
                           "loop.png"}
    assert "more than the limit" in failed["huge.png"]
    assert "symbolic link loop" in failed["loop.png"]
    written = {p.stem for p in report.written}
    assert {"#hash", "with space", "naïve-ü"} <= written
    assert len(written) == len(image_files(corpus / "images")) - len(failed)
    again = predict_files(model, [corpus / "images" / "huge.png"], tmp_path / "big",
                          max_pixels=200_000_000)
    assert not again.failed and again.written  # the limit is an option, not a wall


# --- TIFF variants -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_three_sample_black_is_zero_tiffs(tmp_path: Path, dtype: type, planar: str) -> None:
    """Frames Pillow cannot open (and OpenCV reads as one channel) are read with tifffile."""
    scale = 257 if dtype is np.uint16 else 1
    values = PHOTO.astype(dtype) * scale
    path = tmp_path / "frame.tif"
    stored = values if planar == "contig" else values.transpose(2, 0, 1)
    tifffile.imwrite(path, stored, photometric="minisblack", planarconfig=planar)
    with pytest.raises((OSError, ValueError)), Image.open(path) as im:
        im.load()
    np.testing.assert_array_equal(read_image(path), PHOTO)
    assert image_size(path) == (H, W)
    mask = tmp_path / "mask.tif"
    tifffile.imwrite(mask, np.dstack([SQUARE] * 3).astype(dtype) * scale,
                     photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(read_mask(mask), SQUARE > 0)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    path = tmp_path / "o.tif"
    tifffile.imwrite(path, PHOTO, photometric="rgb", extratags=[(274, "H", 1, orientation)])
    by_pillow, _ = _read_pillow(path, "image", 10**6)
    by_tifffile, _ = _read_tifffile(path, "image", 10**6)
    np.testing.assert_array_equal(by_tifffile, by_pillow)
    assert image_size(path) == by_pillow.shape[:2]


def test_unreadable_and_oversized_tiffs_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(DataError, match=r"cannot read image .*empty\.tif"):
        read_image(tmp_path / "empty.tif")
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((40, 40, 3), np.uint8),
                     photometric="minisblack", planarconfig="contig")
    with pytest.raises(DataError, match=r"big\.tif has 1,600 pixels, more than the limit of 100"):
        read_image(tmp_path / "big.tif", max_pixels=100)


def test_evaluation_and_prediction_print_plain_progress_off_a_terminal(
    corpus: Path, tmp_path: Path
) -> None:
    from io import StringIO

    from condseg.evaluation.evaluate import evaluate
    from condseg.inference.predict import predict_files
    from condseg.models.registry import create_model

    model = create_model("condseg-net0", encoder="resnet18")
    model.meta = {"mean": [0.5] * 3, "std": [0.25] * 3, "input_size": [32, 32]}
    (corpus / "usable.txt").write_text("\n".join(OK) + "\n", encoding="utf-8")
    log = StringIO()
    evaluate(model, corpus, split="usable", console=Console(file=log, width=200))
    predict_files(model, [corpus / "images" / "plain.png", corpus / "images" / "grey.png"],
                  tmp_path / "out", console=Console(file=log, width=200), batch_size=1)
    text = log.getvalue()
    assert f"evaluate usable: {len(OK)}/{len(OK)} images (" in text
    assert "predict: 1/2 images (" in text and "predict: 2/2 images (" in text
    assert "\x1b[" not in text
