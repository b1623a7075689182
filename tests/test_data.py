"""Data I/O, transforms, the folder dataset, the synthetic generator and real Kvasir-SEG files."""

from __future__ import annotations

import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from condseg.config import Augmentation, DataConfig
from condseg.data.dataset import SegmentationDataset, train_and_val_datasets
from condseg.data.index import find_pair
from condseg.data.masks import read_mask
from condseg.data.prepare import packaged_split
from condseg.data.reading import image_size, read_image
from condseg.data.split_files import read_split
from condseg.data.synthetic import synthesize
from condseg.data.transforms import (
    geometric_augmentation,
    resize_image,
    resize_mask,
    strong_photometric,
)
from condseg.errors import DataError
from condseg.models.base import IMAGENET_MEAN, IMAGENET_STD

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

IMAGENET = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def make_layout(root: Path, files: dict[str, np.ndarray | bytes], splits: dict[str, str]) -> Path:
    """Write ``{"images/a.png": array, ...}`` and ``{"train": "a\\nb\\n"}`` under ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            Image.fromarray(content).save(path)
    for split, text in splits.items():
        (root / f"{split}.txt").write_text(text)
    return root


# --- split files and pairing -------------------------------------------------------------------


def test_read_split_keeps_every_name_skips_only_blank_lines(tmp_path: Path) -> None:
    """No comments: a name starting with '#' is a name (docs/decisions.md, Data)."""
    (tmp_path / "train.txt").write_bytes("\ufeff#1\r\na\r\n\r\n  b  \na\ncafe\u0301\n".encode())
    assert read_split(tmp_path, "train") == ["#1", "a", "b", "a", "caf\u00e9"]
    (tmp_path / "val.txt").write_bytes(b"caf\xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(DataError, match=r"val\.txt.*UTF-8"):
        read_split(tmp_path, "val")


def test_read_split_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"val\.txt"):
        read_split(tmp_path, "val")


def test_find_pair_matches_extensions_case_insensitively(tmp_path: Path) -> None:
    grey = np.zeros((4, 4), np.uint8)
    make_layout(
        tmp_path,
        {
            "images/a.JPEG": np.zeros((4, 4, 3), np.uint8),
            "masks/a.TiF": grey,
            "images/notes.txt": b"x",
        },
        {},
    )
    image, mask = find_pair(tmp_path, "a")
    assert (image.name, mask.name) == ("a.JPEG", "a.TiF")


def test_find_pair_ambiguous_name_is_an_error_naming_both(tmp_path: Path) -> None:
    grey = np.zeros((4, 4), np.uint8)
    make_layout(tmp_path, {"images/a.jpg": grey, "images/a.png": grey, "masks/a.png": grey}, {})
    with pytest.raises(DataError) as info:
        find_pair(tmp_path, "a")
    assert "a.jpg" in str(info.value) and "a.png" in str(info.value)


def test_find_pair_missing_mask_names_name_and_folder(tmp_path: Path) -> None:
    make_layout(tmp_path, {"images/a.png": np.zeros((4, 4), np.uint8)}, {})
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match=r"no mask file for 'a' in .*masks"):
        find_pair(tmp_path, "a")
    with pytest.raises(DataError, match="without extension"):
        find_pair(tmp_path, "a.png")


# --- decoding ----------------------------------------------------------------------------------


def test_read_mask_binarises_noisy_8bit_values_at_128(tmp_path: Path) -> None:
    values = np.array([[0, 3, 60, 127], [128, 129, 200, 255]], np.uint8)
    Image.fromarray(values).save(tmp_path / "m.png")
    expected = np.array([[0, 0, 0, 0], [1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), expected)


def test_read_mask_jpeg_artefacts_binarise_to_the_drawn_shape(tmp_path: Path) -> None:
    drawn = np.zeros((64, 64), np.uint8)
    cv2.circle(drawn, (32, 32), 18, 255, -1)
    cv2.imwrite(str(tmp_path / "m.jpg"), drawn, [cv2.IMWRITE_JPEG_QUALITY, 75])
    decoded = cv2.imread(str(tmp_path / "m.jpg"), cv2.IMREAD_GRAYSCALE)
    assert len(np.unique(decoded)) > 2  # the JPEG really is noisy
    assert (read_mask(tmp_path / "m.jpg") != (drawn > 0)).mean() < 0.01


def test_read_mask_16bit_threshold_is_32768(tmp_path: Path) -> None:
    values = np.array([[0, 255, 32767, 32768, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "m.png"), values)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), [[0, 0, 0, 1, 1]])


def test_read_mask_rgb_uses_the_maximum_over_channels(tmp_path: Path) -> None:
    rgb = np.array([[[255, 0, 0], [0, 0, 200], [100, 100, 100], [0, 0, 0]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), [[1, 1, 0, 0]])


def _palette() -> Image.Image:
    image = Image.fromarray(np.array([[0, 1, 2]], np.uint8), mode="L").convert("P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 9))
    return image


_RGBA = np.array([[[10, 20, 30, 0], [40, 50, 60, 255], [1, 2, 3, 9]]], np.uint8)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: Image.fromarray(np.array([[0, 128, 255]], np.uint8)), [0, 128, 255]),
        (lambda: Image.fromarray(_RGBA), [(10, 20, 30), (40, 50, 60), (1, 2, 3)]),
        (_palette, [(0, 0, 0), (255, 0, 0), (0, 128, 255)]),
        (lambda: Image.fromarray(np.array([[0, 32896, 65535]], np.uint16)), [0, 128, 255]),
    ],
    ids=["grey", "rgba", "palette", "16bit"],
)
def test_read_image_converts_to_8bit_rgb(tmp_path: Path, make, expected) -> None:
    im = make()
    im.save(tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").mode == im.mode  # the file really has that format
    image = read_image(tmp_path / "x.png")
    assert image.dtype == np.uint8 and image.shape == (1, 3, 3)
    want = np.array([[e] * 3 if np.isscalar(e) else e for e in expected], np.uint8)
    np.testing.assert_array_equal(image[0], want)


def test_read_image_16bit_rgb_tiff(tmp_path: Path) -> None:
    rgb16 = np.array([[[65535, 32896, 0]]], np.uint16)  # R, G, B
    cv2.imwrite(str(tmp_path / "x.tif"), rgb16[:, :, ::-1])
    np.testing.assert_array_equal(read_image(tmp_path / "x.tif")[0, 0], [255, 128, 0])


def test_exif_orientation_is_honoured_for_image_mask_and_size(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (250, 10, 10)  # left half red as stored: top half red as displayed
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    for name in ("x.jpg", "m.jpg"):
        Image.fromarray(stored).save(tmp_path / name, exif=exif, quality=95)
    displayed = np.rot90(stored, k=-1)
    image = read_image(tmp_path / "x.jpg")
    assert image.shape == (40, 20, 3) and image_size(tmp_path / "x.jpg") == (40, 20)
    assert np.abs(image.astype(int) - displayed).mean() < 5
    np.testing.assert_array_equal(read_mask(tmp_path / "m.jpg")[:, 5], [True] * 20 + [False] * 20)


@pytest.mark.parametrize("content", [b"not an image at all", None], ids=["garbage", "truncated"])
def test_unreadable_image_raises_naming_the_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.jpg"
    if content is None:
        cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
        content = path.read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"bad\.jpg"):
        read_image(path)
    with pytest.raises(DataError, match=r"bad\.jpg"):
        read_mask(path)


# --- transforms --------------------------------------------------------------------------------


def test_resize_mask_area_then_threshold_half() -> None:
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True  # a full 2x2 block -> 1
    mask[2, 2] = mask[2, 3] = True  # half of a block -> 0.5 -> 1
    mask[0, 2] = True  # a quarter of a block -> 0
    np.testing.assert_array_equal(resize_mask(mask, 2), [[1, 0], [0, 1]])
    assert resize_mask(mask, (2, 3)).shape == (2, 3) and resize_mask(mask, 2).dtype == np.uint8


def test_resize_image_area_when_shrinking() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[::2, ::2] = 200  # fine checkerboard: area averaging gives 50 everywhere
    np.testing.assert_array_equal(resize_image(image, 2), np.full((2, 2, 3), 50, np.uint8))
    assert resize_image(image, (8, 6)).shape == (8, 6, 3)


def test_strong_photometric_parameters() -> None:
    jitter, gray, blur = strong_photometric().transforms
    assert isinstance(jitter, A.ColorJitter) and jitter.p == 1.0
    assert jitter.brightness == jitter.contrast == jitter.saturation == pytest.approx((0.7, 1.3))
    assert jitter.hue == pytest.approx((-0.1, 0.1))
    assert isinstance(gray, A.ToGray) and gray.p == 0.5
    assert isinstance(blur, A.GaussianBlur) and blur.p == 1.0
    assert tuple(blur.blur_limit) == (7, 7) and tuple(blur.sigma_limit) == (0.1, 3.0)


def test_geometric_augmentation_moves_image_and_mask_together() -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[8:30, 10:50] = 1
    image = np.repeat((mask * 255)[:, :, None], 3, axis=2)
    augment = geometric_augmentation(rotate=90, p_rotate=1.0, p_flip=0.5, seed=3)
    for _ in range(5):
        out = augment(image=image, mask=mask)
        assert set(np.unique(out["mask"])) <= {0, 1}
        agree = (out["image"][:, :, 0] >= 128) == (out["mask"] == 1)
        assert agree.mean() > 0.98
    assert not np.array_equal(out["mask"], mask)


def test_geometric_augmentation_can_flip_horizontally_only() -> None:
    """MSNet's and CHNet's recipes: a horizontal flip (p_flip) and no vertical one (p_vflip)."""
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    mask = (image[:, :, 0] % 2).astype(np.uint8)
    out = geometric_augmentation(rotate=0, p_rotate=0.0, p_flip=1.0, p_vflip=0.0)(
        image=image, mask=mask)
    assert np.array_equal(out["image"], image[:, ::-1])
    assert np.array_equal(out["mask"], mask[:, ::-1])
    both = geometric_augmentation(rotate=0, p_rotate=0.0, p_flip=1.0)(image=image, mask=mask)
    assert np.array_equal(both["image"], image[::-1, ::-1])


# --- dataset -----------------------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """Two 30x40 pairs: a constant image with a left-half mask, and a synthetic-like one."""
    colour = np.empty((30, 40, 3), np.uint8)
    colour[:] = (100, 150, 200)
    mask = np.zeros((30, 40), np.uint8)
    mask[:, :20] = 255
    return make_layout(
        tmp_path / "ds",
        {
            "images/a.png": colour,
            "masks/a.png": mask,
            "images/b.jpg": colour,
            "masks/b.bmp": 255 - mask,
        },
        {"train": "a\nb\n"},
    )


def test_dataset_item_shapes_dtypes_and_normalisation(tiny: Path) -> None:
    ds = SegmentationDataset(tiny, "train", size=16, **IMAGENET)
    item = ds[0]
    assert item["name"] == "a" and set(item) == {"image", "mask", "name"}
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 16, 16) and item["mask"].dtype == torch.float32
    expected = (np.array([100, 150, 200]) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(item["image"][:, 5, 5].numpy(), expected, rtol=1e-5)
    assert item["mask"][0, :, :8].eq(1).all() and item["mask"][0, :, 8:].eq(0).all()
    assert ds.original_size(1) == (30, 40)
    raw = SegmentationDataset(tiny, ["b"], size=16, mean=None, std=None)[0]["image"]
    assert raw.min() >= 0 and raw.max() <= 1


def test_dataset_exclude_and_missing_pair(tiny: Path) -> None:
    ds = SegmentationDataset(tiny, "train", size=16, exclude=["a", "zzz"], **IMAGENET)
    assert ds.names == ["b"] and ds.excluded == ["a"]
    with pytest.raises(DataError, match="'c'"):
        SegmentationDataset(tiny, ["a", "c"], size=16, **IMAGENET)


def test_strong_view_differs_but_shares_the_mask(tiny: Path) -> None:
    torch.manual_seed(0)
    augment = geometric_augmentation(rotate=30, p_rotate=1.0, p_flip=0.0)
    plain = SegmentationDataset(tiny, "train", size=32, augment=augment, **IMAGENET)
    torch.manual_seed(0)
    augment = geometric_augmentation(rotate=30, p_rotate=1.0, p_flip=0.0)
    strong = SegmentationDataset(tiny, "train", size=32, augment=augment,
                                 views={"strong": strong_photometric()}, **IMAGENET)
    a, b = plain[0], strong[0]
    assert torch.equal(a["mask"], b["mask"])  # same seed -> same geometry, one mask
    assert torch.equal(a["image"], b["image"])
    assert b["strong"].shape == b["image"].shape
    assert not torch.allclose(b["strong"], b["image"], atol=1e-2)


def test_a_data_config_gives_the_train_and_val_sets_a_stage_trains_on(tiny: Path) -> None:
    (tiny / "val.txt").write_text("b\n")
    data = DataConfig(root=tiny, size=16, train_split="train", val_split="val", skip=["a"])
    augmentation = Augmentation(rotate=30, p_rotate=1.0, p_flip=0.0)
    torch.manual_seed(0)
    train, val = train_and_val_datasets(data, augmentation, ["strong"], **IMAGENET)
    item = train[0]
    assert train.names == ["b"] and train.excluded == ["a"] and val.names == ["b"]
    assert set(item) == {"image", "mask", "name", "strong"} and val.augment is None
    torch.manual_seed(0)
    same = SegmentationDataset(tiny, "train", size=16, exclude=["a"],
                               augment=geometric_augmentation(rotate=30, p_rotate=1.0, p_flip=0.0),
                               views={"strong": strong_photometric()}, **IMAGENET)[0]
    assert all(torch.equal(item[key], same[key]) for key in ("image", "mask", "strong"))
    expected = SegmentationDataset(tiny, "val", size=16, **IMAGENET)[0]["image"]
    assert torch.equal(val[0]["image"], expected)


def test_dataloader_workers_draw_different_augmentations(tiny: Path) -> None:
    augment = geometric_augmentation(rotate=180, p_rotate=1.0, p_flip=0.5)
    ds = SegmentationDataset(tiny, ["a"] * 4, size=16, augment=augment, **IMAGENET)
    loader = DataLoader(ds, batch_size=1, num_workers=2)
    masks = [batch["mask"] for batch in loader]
    # Items 0 and 1 are the first draws of worker 0 and worker 1: forked with the same
    # albumentations state, they would be identical without per-worker seeding.
    assert not torch.equal(masks[0], masks[1])


# --- synthetic data ----------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_synthesize_is_deterministic_fast_and_canonical(tmp_path: Path) -> None:
    start = time.perf_counter()
    first = synthesize(tmp_path / "a", n_train=48, n_val=16, size=128, seed=7)
    seconds = time.perf_counter() - start
    assert seconds < 10, f"synthesis took {seconds:.1f} s"  # ~1 s on a loaded 2-core machine
    synthesize(tmp_path / "b", n_train=48, n_val=16, size=128, seed=7)
    assert _tree(first) == _tree(tmp_path / "b")
    synthesize(tmp_path / "c", n_train=48, n_val=16, size=128, seed=8)
    assert _tree(first)["images/synth_0000.png"] != _tree(tmp_path / "c")["images/synth_0000.png"]
    assert len(read_split(first, "train")) == 48 and len(read_split(first, "val")) == 16
    for name in read_split(first, "val"):
        image_path, mask_path = find_pair(first, name)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        assert read_image(image_path).shape == (128, 128, 3) and mask.shape == (128, 128)
        assert set(np.unique(mask)) == {0, 255}
        lesions = cv2.connectedComponents((mask > 0).astype(np.uint8))[0] - 1
        assert 1 <= lesions <= 3


def test_synthesize_refuses_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    synthesize(tmp_path, n_train=4, n_val=2, size=32)
    with pytest.raises(DataError, match="overwrite"):
        synthesize(tmp_path, n_train=2, n_val=1, size=32)
    synthesize(tmp_path, n_train=2, n_val=1, size=32, overwrite=True)
    assert len(list((tmp_path / "images").iterdir())) == 3  # stale files of the first run gone


# --- real data ---------------------------------------------------------------------------------


@pytest.fixture
def kvasir() -> Path:
    root = SHARED / "kvasir-seg"
    if not (root / "images").is_dir():
        pytest.skip(f"real Kvasir-SEG data not found at {root} (only on the project machines)")
    return root


def test_packaged_split_lists_match_the_shared_data(kvasir: Path) -> None:
    for dataset, splits in (
        ("kvasir-seg", ("train", "val")),
        ("kvasir-sessile", ("train", "val", "test")),
    ):
        for split in splits:
            assert packaged_split(dataset, split) == read_split(SHARED / dataset, split)


def test_real_kvasir_items(kvasir: Path) -> None:
    names = read_split(kvasir, "val")[:3]
    for name in names:
        image_path, mask_path = find_pair(kvasir, name)
        mask = read_mask(mask_path)
        assert read_image(image_path).shape[:2] == mask.shape
        assert 0.0 < mask.mean() < 1.0
    ds = SegmentationDataset(
        kvasir, names, size=64, augment=geometric_augmentation(),
        views={"strong": strong_photometric()}, **IMAGENET,
    )
    item = ds[0]
    assert item["image"].shape == item["strong"].shape == (3, 64, 64)
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert ds.original_size(0) == read_image(ds.pairs[0][0]).shape[:2]
