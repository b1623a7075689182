"""Issue 15, class 5: every image and mask format and every odd file name is either read right
or reported by file — through the one reader, the folder listing, split files, `data check`,
`data prepare` and `predict DIR` (docs/decisions.md, "Formats and names")."""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from condseg import cli
from condseg.data.check import check_dataset
from condseg.data.masks import read_mask
from condseg.data.names import IMAGE_EXTENSIONS, scan_folder, shown, unlistable
from condseg.data.prepare import prepare, prepare_folder
from condseg.data.reading import image_size, read_image
from condseg.data.split_files import read_split, write_split
from condseg.errors import DataError
from condseg.layout import DatasetDir
from condseg.models.base import ModelOutput, SegmentationModel

H, W = 24, 32  # not square, so that a transposition shows
SQUARE = np.zeros((H, W), np.uint8)
SQUARE[6:18, 8:24] = 255
FG = SQUARE > 0
# A smooth photo of few colours: exact in a palette, close after JPEG.
_Y, _X = np.mgrid[0:H, 0:W]
PHOTO = np.dstack([_X * 8, _Y * 10, np.full((H, W), 96)]).astype(np.uint8) // 16 * 16
GREY = PHOTO[:, :, 0]
Writer = Callable[[Path], None]


def pil(values: np.ndarray, mode: str | None = None, **options: object) -> Writer:
    return lambda path: Image.fromarray(values, mode).save(path, **options)


def converted(mode: str, values: np.ndarray = SQUARE, **options: object) -> Writer:
    return lambda path: Image.fromarray(values).convert(mode).save(path, **options)


def opencv(values: np.ndarray) -> Writer:
    return lambda path: cv2.imwrite(str(path), values)


def tiff(values: np.ndarray, **options: object) -> Writer:
    return lambda path: tifffile.imwrite(path, values, **options)


def frames(*planes: np.ndarray, **options: object) -> Writer:
    first, *rest = (Image.fromarray(p) for p in planes)
    return lambda path: first.save(path, save_all=True, append_images=rest, **options)


def palette(indices: np.ndarray, colours: list[int], **options: object) -> Writer:
    def write(path: Path) -> None:
        im = Image.fromarray(indices.astype(np.uint8), "P")
        im.putpalette(colours)
        im.save(path, **options)

    return write


def rgba(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    colour = np.broadcast_to(colour, (H, W, 3)) if colour.ndim < 3 else colour
    return np.dstack([colour, alpha]).astype(np.uint8)


WHITE, BLACK = np.full(3, 255, np.uint8), np.zeros(3, np.uint8)
RED_ON_CLEAR_WHITE = rgba(np.where(FG[:, :, None], [255, 0, 0], [255, 255, 255]), SQUARE)
SQUARE16 = SQUARE.astype(np.uint16) * 257
STACK = np.stack([np.dstack([SQUARE] * 3)] * 2)  # 2 pages of 3 BlackIsZero samples

MASKS: dict[str, tuple[Writer, str | None]] = {  # file: (writer, None = reads as SQUARE | error)
    "grey.png": (pil(SQUARE), None),
    "UPPER.PNG": (pil(SQUARE), None),
    "one-bit.png": (converted("1"), None),
    "one-bit.bmp": (converted("1"), None),
    "one-bit.tif": (converted("1"), None),
    "netpbm.pbm": (converted("1"), None),
    "netpbm.pgm": (pil(SQUARE), None),
    "palette.gif": (converted("P"), None),
    "palette.png": (converted("P"), None),
    "voc-palette.png": (palette(FG, [0, 0, 0, 128, 0, 0]), None),
    # the transparent index is white: read as displayed over black, i.e. background
    "clear-white.gif": (palette(FG, [255, 255, 255, 255, 0, 0], transparency=0), None),
    "clear-white.png": (palette(FG, [255, 255, 255, 255, 0, 0], transparency=0), None),
    "colour-key.png": (pil(np.where(FG, 255, 200).astype(np.uint8), transparency=200), None),
    "lossless.webp": (pil(SQUARE, lossless=True), None),
    "rgb.webp": (pil(np.dstack([SQUARE] * 3), lossless=True), None),
    "quality.jpg": (pil(SQUARE, quality=95), None),
    "UPPER.JPG": (pil(SQUARE, quality=95), None),
    "name.jpeg": (pil(SQUARE, quality=95), None),
    "name.jfif": (pil(SQUARE, format="JPEG", quality=95), None),
    "name.jpe": (pil(SQUARE, format="JPEG", quality=95), None),
    "cmyk.jpg": (converted("CMYK", np.dstack([SQUARE] * 3), quality=95), None),
    "cmyk.tif": (converted("CMYK", np.dstack([SQUARE] * 3)), None),
    "lossless.jp2": (pil(SQUARE), None),
    "grey16.png": (opencv(SQUARE16), None),
    "rgb16.png": (opencv(np.dstack([SQUARE16] * 3)), None),
    "rgba16.png": (opencv(np.dstack([SQUARE16] * 3 + [SQUARE16 * 0 + 65535])), None),
    "grey16.tif": (tiff(SQUARE16), None),
    "rgb16.tif": (tiff(np.dstack([SQUARE16] * 3), photometric="rgb"), None),
    "rgba16.tif": (tiff(np.dstack([SQUARE16] * 4), photometric="rgb", extrasamples=[2]), None),
    "white-is-zero16.tif": (tiff(65535 - SQUARE16, photometric="miniswhite"), None),
    "white-is-zero.tif": (tiff(255 - SQUARE, photometric="miniswhite"), None),
    "three-samples16.tif": (tiff(np.dstack([SQUARE16] * 3), photometric="minisblack",
                                 planarconfig="contig"), None),
    # foreground only in the alpha plane: one colour everywhere, so alpha is the mask
    "alpha-only-black.png": (pil(rgba(BLACK, SQUARE)), None),
    "alpha-only-white.png": (pil(rgba(WHITE, SQUARE)), None),
    "alpha-only-grey.png": (pil(np.dstack([SQUARE * 0 + 90, SQUARE]), "LA"), None),
    "alpha-only16.tif": (tiff(np.dstack([SQUARE16 * 0, SQUARE16]), photometric="minisblack",
                              extrasamples=[2]), None),
    # colours that vary: displayed over black (transparent white is background)
    "red-on-clear-white.png": (pil(RED_ON_CLEAR_WHITE), None),
    "red-on-clear-white.webp": (pil(RED_ON_CLEAR_WHITE, lossless=True), None),
    "opaque-rgba.png": (pil(rgba(np.dstack([SQUARE] * 3), SQUARE * 0 + 255)), None),
    "camera-mpo.jpg": (frames(np.dstack([SQUARE] * 3), np.dstack([255 - SQUARE] * 3),
                          format="MPO"), None),
    "animated.gif": (frames(SQUARE, 255 - SQUARE), "has 2 frames"),
    "animated.png": (frames(SQUARE, 255 - SQUARE), "has 2 frames"),
    "animated.webp": (frames(SQUARE, 255 - SQUARE, lossless=True), "has 2 frames"),
    "pages.tif": (frames(SQUARE, 255 - SQUARE), "has 2 frames"),
    "pages-tifffile.tif": (tiff(STACK, photometric="minisblack", planarconfig="contig"),
                           "has 2 frames"),
    "float.tif": (tiff(SQUARE.astype(np.float32)), "save it as 8- or 16-bit"),
    "ycbcr-tifffile.tif": (tiff(np.dstack([SQUARE16] * 3), photometric="ycbcr"),
                           "YCBCR TIFF that Pillow cannot read; save it as grey or RGB"),
}


@pytest.mark.parametrize("file", list(MASKS))
def test_mask_formats_read_right_or_refused_by_name(tmp_path: Path, file: str) -> None:
    write, error = MASKS[file]
    path = tmp_path / file
    write(path)
    if error is None:
        np.testing.assert_array_equal(read_mask(path), FG)
        assert image_size(path) == (H, W)
    else:
        with pytest.raises(DataError, match=rf"{re.escape(str(path))}.*{error}"):
            read_mask(path)


def test_every_readable_mask_format_passes_data_check(tmp_path: Path) -> None:
    """The reader's masks through `data check`'s distribution checks: no problem at all."""
    readable = [file for file, (_, error) in MASKS.items() if error is None]
    for i, file in enumerate(readable):
        pil(PHOTO)(_make(tmp_path / "images" / f"case{i}.png"))
        MASKS[file][0](_make(tmp_path / "masks" / f"case{i}{Path(file).suffix}"))
    write_split(tmp_path / "train.txt", [f"case{i}" for i in range(len(readable))])
    write_split(tmp_path / "val.txt", ["case0"])
    problems = check_dataset(tmp_path).problems
    voc = f"masks/case{readable.index('voc-palette.png')}.png"  # its colour (128, 0, 0) is grey
    assert sorted((p.level, p.file, p.message[:16]) for p in problems) == [
        ("error", None, "listed in train."), ("warning", voc, "25% of mask pixe")]


IMAGES: dict[str, tuple[Writer, np.ndarray | str, float]] = {  # file: (writer, RGB | error, tol)
    "rgb.png": (pil(PHOTO), PHOTO, 0),
    "UPPER.PNG": (pil(PHOTO), PHOTO, 0),
    "grey.png": (pil(GREY), np.dstack([GREY] * 3), 0),
    "rgba.png": (pil(rgba(PHOTO, SQUARE)), PHOTO, 0),  # alpha dropped
    "la.png": (pil(np.dstack([GREY, SQUARE]), "LA"), np.dstack([GREY] * 3), 0),
    "palette.gif": (pil(PHOTO), PHOTO, 0),  # few colours: the palette holds them exactly
    "palette-clear.png": (palette(FG, [10, 20, 30, 200, 0, 0], transparency=0),
                          np.where(FG[:, :, None], [200, 0, 0], [10, 20, 30]), 0),
    "one-bit.png": (converted("1"), np.dstack([SQUARE] * 3), 0),
    "lossless.webp": (pil(PHOTO, lossless=True), PHOTO, 0),
    "lossless.jp2": (pil(PHOTO), PHOTO, 0),
    "netpbm.ppm": (pil(PHOTO), PHOTO, 0),
    "photo.bmp": (pil(PHOTO), PHOTO, 0),
    "photo.tif": (pil(PHOTO), PHOTO, 0),
    "rgb16.png": (opencv(PHOTO[:, :, ::-1].astype(np.uint16) * 257), PHOTO, 0),
    "rgb16.tif": (tiff(PHOTO.astype(np.uint16) * 257, photometric="rgb"), PHOTO, 0),
    "grey16.png": (opencv(GREY.astype(np.uint16) * 257), np.dstack([GREY] * 3), 0),
    "cmyk.tif": (converted("CMYK", PHOTO), PHOTO, 0),
    "photo.JPG": (pil(PHOTO, quality=95), PHOTO, 3),
    "photo.jfif": (pil(PHOTO, format="JPEG", quality=95), PHOTO, 3),
    "photo.jpe": (pil(PHOTO, format="JPEG", quality=95), PHOTO, 3),
    "cmyk.jpg": (converted("CMYK", PHOTO, quality=95), PHOTO, 3),
    "animated.gif": (frames(PHOTO, PHOTO[::-1]), "has 2 frames", 0),
    "animated.webp": (frames(PHOTO, PHOTO[::-1]), "has 2 frames", 0),
    "pages.tif": (frames(PHOTO, PHOTO[::-1]), "has 2 frames", 0),
}


@pytest.mark.parametrize("file", list(IMAGES))
def test_image_formats_read_right_or_refused_by_name(tmp_path: Path, file: str) -> None:
    """JPEGs within a mean error of ``tol``; image_size agrees with the reader (it is all
    `data prepare` reads of an image)."""
    write, expected, tol = IMAGES[file]
    path = tmp_path / file
    write(path)
    if isinstance(expected, str):
        for read in (read_image, image_size):
            with pytest.raises(DataError, match=rf"{re.escape(str(path))}.*{expected}"):
                read(path)
        return
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (H, W, 3) and image_size(path) == (H, W)
    assert np.abs(image.astype(int) - expected).mean() <= tol


# --- names: folder listing and split files ------------------------------------------------------

TAKEN = ["a.PNG", "b.webp", "c.gif", "d.jfif", "e.jpe", "f.JPEG", "g.TIFF", "h.jp2", "i.ppm",
         "trailing space .png", " leading.png", "new\nline.png", "sep\u2028arator.png",
         "next\x85line.png", "tab\tname.png", "naïve.png", "x.png"]  # x.png is a folder
SKIPPED = {".DS_Store": "hidden entry", "._a.jpg": "hidden entry", ".hidden.png": "hidden entry",
           "notes.txt": "not an image file type (.txt)", "README": "no extension",
           "scan.dcm": "not an image file type (.dcm)", "sub": "subfolder, not searched"}


def test_folder_scan_takes_or_names_every_entry(tmp_path: Path) -> None:
    for name in [*TAKEN, *SKIPPED]:
        if name in ("x.png", "sub"):
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_bytes(b"")
    scan = scan_folder(tmp_path)
    assert [p.name for p in scan.images] == sorted(TAKEN)
    reasons = {p.name: why for p, why in scan.skipped}
    assert set(reasons) == set(SKIPPED)
    assert all(SKIPPED[name] in why for name, why in reasons.items())


LISTABLE = {  # name as written -> name as read back
    "plain": "plain", "with space": "with space", "#hash": "#hash", "naïve": "naïve",
    "cafe\u0301": "café", "sep\u2028arator": "sep\u2028arator", "next\x85line": "next\x85line",
    "para\u2029graph": "para\u2029graph", "vt\x0bff\x0cfs\x1cx": "vt\x0bff\x0cfs\x1cx",
    "tab\tname": "tab\tname", "[bold]x": "[bold]x",
}
UNLISTABLE = {"new\nline": "line break", "carriage\rreturn": "line break", "": "blank",
              "   ": "blank", "bad\udcffbyte": "not valid UTF-8"}


def test_split_files_read_back_what_was_written_or_refuse_the_name(tmp_path: Path) -> None:
    write_split(tmp_path / "train.txt", LISTABLE)
    assert read_split(tmp_path, "train") == list(LISTABLE.values())
    for name, why in UNLISTABLE.items():
        assert why in (unlistable(name) or "")
        with pytest.raises(DataError, match=rf"train\.txt: .*{why}"):
            write_split(tmp_path / "train.txt", ["plain", name])
    with pytest.raises(DataError, match="surrounding whitespace"):
        write_split(tmp_path / "train.txt", ["trailing "])
    assert shown("new\nline\u2028x\udcff") == "new\\nline\\u2028x\\udcff"


def test_check_matches_names_and_reports_unlistable_images_and_orphan_masks(
    tmp_path: Path,
) -> None:
    """Listed names find their files (a trailing space or NFD in the file name included);
    an image whose name no split can list and a mask without an image are a warning each."""
    listed = ["trailing space ", "café", "sep\u2028arator", "tab\tname"]
    for name in [*listed, "new\nline"]:
        stem = unicodedata.normalize("NFD", name)
        pil(PHOTO)(_make(tmp_path / "images" / f"{stem}.png"))
        pil(SQUARE)(_make(tmp_path / "masks" / f"{stem}.png"))
    pil(SQUARE)(tmp_path / "masks" / "orphan.gif")
    (tmp_path / "images" / ".DS_Store").write_text("x")
    (tmp_path / "images" / "scan.dcm").write_text("x")
    (tmp_path / "masks" / "old").mkdir()
    (tmp_path / "train.txt").write_text("trailing space\ncafé\n", encoding="utf-8")
    write_split(tmp_path / "val.txt", ["sep\u2028arator", "tab\tname"])
    report = check_dataset(tmp_path)
    assert report.ok, report.problems
    assert report.split_sizes == {"train": 2, "val": 2}
    assert {(p.level, p.file) for p in report.problems} == {
        ("warning", "images/new\nline.png"), ("warning", "masks/orphan.gif"),
        ("info", "images/"), ("info", "masks/")}
    [unlisted] = [p for p in report.problems if p.file == "images/new\nline.png"]
    assert "line break" in unlisted.message and "rename the file" in unlisted.message
    [orphan] = [p for p in report.problems if p.file == "masks/orphan.gif"]
    assert "mask without an image (no images/orphan.* file)" in orphan.message
    notes = {p.file: p.message for p in report.infos}
    assert notes["images/"].endswith("not used: 2 (.DS_Store, scan.dcm)")
    assert notes["masks/"].endswith("not used: 1 (old)")


def _make(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --- converters: converted and checked, or listed in not_converted.tsv --------------------------

FOLDER_PAIRS = {  # image file, mask file: converted
    "a.PNG": "a_mask.GIF", "b.webp": "b.png", "c.jfif": "c_GT.bmp", "d.jpe": "d.tif",
    "trailing .jpg": "trailing _mask.png", "sep\u2028arator.png": "sep\u2028arator.png",
    "naïve.gif": "naïve.png", "alpha.png": "alpha.png", "deep16.png": "deep16.tif",
}
FOLDER_REPORTED = {  # file (relative to the root): reason in not_converted.tsv
    "images/new\nline.png": "line break", "masks/new\nline.png": "line break",
    "images/animated.gif": "has 2 frames", "masks/orphan.png": "no image for this mask",
    "images/.DS_Store": "hidden entry", "masks/._a_mask.GIF": "hidden entry",
    "images/notes.txt": "not an image file type (.txt)",
    "images/.ipynb_checkpoints": "hidden entry",
    # one name once whitespace is ignored: which file is meant is the user's call
    "images/dup.png": "several files for name 'dup'", "images/dup .png": "several files",
    "masks/dup.png": "several files for name 'dup'",
}


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("odd")
    (root / "images" / ".ipynb_checkpoints").mkdir(parents=True)
    (root / "masks").mkdir()
    for image, mask in FOLDER_PAIRS.items():
        pil(PHOTO)(root / "images" / image)
        pil(SQUARE)(root / "masks" / mask)
    pil(rgba(BLACK, SQUARE))(root / "masks" / "alpha.png")  # foreground only in alpha
    opencv(SQUARE16)(root / "masks" / "deep16.tif")
    pil(PHOTO)(root / "images" / ".ipynb_checkpoints" / "a-checkpoint.png")
    for file in FOLDER_REPORTED:
        path = root / file
        if not path.exists():
            pil(SQUARE)(path) if path.suffix.lower() in IMAGE_EXTENSIONS else path.write_text("x")
    frames(PHOTO, PHOTO[::-1])(root / "images" / "animated.gif")
    pil(SQUARE)(root / "masks" / "animated.png")
    return root


def not_converted(out: Path) -> dict[str, str]:
    with DatasetDir(out).not_converted.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["file", "reason"]
    return dict(rows[1:])


def test_prepare_folder_converts_or_lists_every_entry(odd_folder: Path, tmp_path: Path) -> None:
    out = prepare_folder(odd_folder / "images", odd_folder / "masks", tmp_path / "out",
                         split=[0.5, 0.5])
    listed = read_split(out, "train") + read_split(out, "val")
    assert sorted(listed) == sorted(["a", "b", "c", "d", "trailing", "sep\u2028arator",
                                     "naïve", "alpha", "deep16"])
    assert check_dataset(out).ok and not check_dataset(out).problems
    assert read_mask(next((out / "masks").glob("alpha.*"))).sum() == FG.sum()
    reported = not_converted(out)
    for file, why in FOLDER_REPORTED.items():
        assert why in reported.pop(str(odd_folder / file)), file
    assert not reported  # each row is one of those: the animation's row names its mask too
    assert str(odd_folder / "masks" / "animated.png") in not_converted(out)[
        str(odd_folder / "images" / "animated.gif")]


def test_release_converter_takes_every_extension_and_case(tmp_path: Path) -> None:
    """CVC-ClinicDB: numbered frames in Original/ and Ground Truth/, in any image format."""
    raw = tmp_path / "raw"
    formats = [".TIF", ".webp", ".png", ".jfif", ".gif", ".BMP", ".ppm", ".jpe"]
    for i in range(1, 17):
        ext = formats[i % len(formats)]
        write = pil(PHOTO[:8, :8], format="JPEG") if ext in (".jfif", ".jpe") else pil(
            PHOTO[:8, :8])
        write(_make(raw / "Original" / f"{i}{ext}"))
        pil(SQUARE[4:12, 4:12])(_make(raw / "Ground Truth" / f"{i}{ext.lower()}"))
    out = prepare("cvc-clinicdb", raw, tmp_path / "out")
    assert len(read_split(out, "train")) + len(read_split(out, "val")) == 16
    assert not DatasetDir(out).not_converted.exists() and check_dataset(out).ok


def test_cli_prepare_lists_what_it_did_not_convert(odd_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.app, ["data", "prepare", "folder", str(odd_folder / "images"),
                                          str(odd_folder / "masks"), str(out)])
    assert result.exit_code == 0, result.output
    assert f"{len(FOLDER_REPORTED)} files not converted" in result.output
    check = CliRunner().invoke(cli.app, ["data", "check", str(out)])
    assert check.exit_code == 0 and "0 errors, 0 warnings" in check.output


# --- predict DIR --------------------------------------------------------------------------------

PREDICTED = ["a.PNG", "b.webp", "c.jfif", "d.gif", "new\nline.png", "sep\u2028arator.jpg",
             "trailing .png", "alpha.png", "deep16.tif"]


class Tiny(SegmentationModel):
    """One convolution: what is tested here is which files predict takes, not the network."""

    encoder_path = None

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(self.conv(x))


@pytest.fixture
def model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model file path that the CLI's load_model answers with :class:`Tiny` (the console wide
    enough for the long lines checked)."""
    import condseg.models.model_file

    monkeypatch.setattr(condseg.models.model_file, "load_model", lambda path: Tiny())
    monkeypatch.setattr(cli.console, "width", 1000)
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"")
    return path


def test_predict_dir_writes_images_lists_skipped_and_fails_by_name(
    tmp_path: Path, model_file: Path
) -> None:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for name in PREDICTED:
        pil(PHOTO)(images / name)
    pil(rgba(PHOTO, SQUARE))(images / "alpha.png")
    opencv(PHOTO.astype(np.uint16) * 257)(images / "deep16.tif")
    frames(PHOTO, PHOTO[::-1])(images / "animated.gif")
    for name in (".DS_Store", "._a.jpg", "notes.txt", "scan.dcm"):
        (images / name).write_text("x")
    pil(PHOTO)(images / "sub" / "inner.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.app, ["predict", str(model_file), str(images), "--out",
                                          str(out), "--workers", "0"])
    assert result.exit_code == 1, result.output  # the animated GIF failed
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{Path(n).stem}.png" for n in PREDICTED)
    lines = result.output.splitlines()
    assert f"wrote {len(PREDICTED)} files to {out}" in lines
    assert [line for line in lines if line.startswith("failed:")] == [
        f"failed: {images / 'animated.gif'}: image {images / 'animated.gif'} has 2 frames (an "
        "animation or a stack), and which one is meant would be a guess; save that frame as a "
        "file of its own"]
    assert sorted(line for line in lines if line.startswith("skipped:")) == sorted([
        f"skipped: {images}: 2 entries (hidden entry): .DS_Store, ._a.jpg",
        f"skipped: {images}: 1 entry (not an image file type (.txt)): notes.txt",
        f"skipped: {images}: 1 entry (not an image file type (.dcm)): scan.dcm",
        f"skipped: {images}: 1 entry (subfolder, not searched): sub",
    ])
    clean = tmp_path / "clean"
    (clean / "more").mkdir(parents=True)
    pil(PHOTO)(clean / "one.webp")
    result = CliRunner().invoke(cli.app, ["predict", str(model_file), str(clean), "--out",
                                          str(tmp_path / "out2"), "--workers", "0"])
    assert result.exit_code == 0, result.output  # a skipped entry is named, not a failure
    assert f"skipped: {clean}: 1 entry (subfolder, not searched): more" in result.output
