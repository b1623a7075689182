"""The canonical folder dataset: ``ROOT/images/<name>.<ext>``, ``ROOT/masks/<name>.<ext>`` and
split files ``ROOT/<split>.txt`` (names without extension, one per line).

Images and masks are decoded with Pillow so that EXIF orientation is honoured the same way for
both (``ImageOps.exif_transpose``): a mask drawn on the displayed photo stays aligned with it.
TIFFs that Pillow cannot open (e.g. 3-sample TIFFs tagged BlackIsZero) are read with tifffile,
and their orientation tag is applied the same way. Every reader refuses an image of more than
``max_pixels`` pixels from its header, before decoding it, and a file of several frames (an
animation or a stack: which frame is meant would be a guess). Which files are images and what a
name is: :mod:`condseg.data.names`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, get_worker_info

from condseg.data.names import (
    IMAGE_EXTENSIONS,
    TIFF_EXTENSIONS,
    name_key,
    scan_folder,
    unlistable,
)
from condseg.data.transforms import resize_image, resize_mask, to_tensor
from condseg.errors import CondsegError

#: Default pixel limit of every reader (``max_pixels=None``): above the largest images of the
#: public releases (ISIC, about 30 MP), far below what a decompression bomb or an accidental
#: 12000x12000 scan would cost to decode (432 MB as RGB, before any resizing).
MAX_PIXELS = 50_000_000

# Pillow modes whose samples are 16 bit; "I" (32-bit int) is what older Pillow versions return
# for 16-bit PNGs, so it is accepted when the values fit in 16 bits.
_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")

# TIFF orientation tag (274) -> the array operation Pillow's exif_transpose applies for it.
_ORIENTATIONS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a),
}


class DataError(CondsegError):
    """Bad or missing input data; the message names the file and what to do about it."""


def read_split(root: str | Path, split: str) -> list[str]:
    """Names listed in ``root/<split>.txt``, in file order.

    Lines end at ``\\n`` only (CRLF accepted), so a name may hold any other character, a
    Unicode line separator (U+2028, U+0085) included. Every non-blank line is a name
    (surrounding whitespace and a UTF-8 BOM are ignored; there are no comments, so a name
    starting with ``#`` is kept), matched as :func:`~condseg.data.names.name_key` matches file
    names. Duplicates are kept: :func:`condseg.data.check.check_dataset` reports them instead of
    this function silently dropping them.
    """
    path = Path(root) / f"{split}.txt"
    if not path.is_file():
        raise DataError(
            f"split file {path} not found: write the {split} names (without extension), "
            "one per line"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read split file {path} ({exc}); save it as UTF-8 text") from exc
    return split_names(text)


def split_names(text: str) -> list[str]:
    """The names of a split file's ``text`` (see :func:`read_split`)."""
    return [name for name in map(name_key, text.split("\n")) if name]


def write_split(path: str | Path, names: Iterable[str]) -> None:
    """Write a split file that :func:`read_split` reads back as ``names``; a name that cannot be
    listed (:func:`~condseg.data.names.unlistable`) is refused, never written."""
    names = list(names)
    for name in names:
        why = unlistable(name)
        if why is not None or name != name.strip():
            raise DataError(f"cannot list {name!r} in split file {path}: "
                            f"{why or 'its name has surrounding whitespace'}; rename the file")
    Path(path).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")


def image_files(folder: str | Path) -> list[Path]:
    """The image files of ``folder``, sorted (:func:`~condseg.data.names.scan_folder`: entries
    with an image extension, unreadable ones included so that reading them reports them)."""
    return scan_folder(folder).images


def _index_folder(folder: Path) -> tuple[dict[str, list[Path]], list[tuple[Path, str]]]:
    """Map each name (:func:`~condseg.data.names.name_key` of the stem) to its image files in
    ``folder`` (any case of extension); and the entries that are not image files, with why."""
    if not folder.is_dir():
        raise DataError(
            f"folder {folder} not found: the dataset layout is ROOT/images/<name>.<ext> and "
            "ROOT/masks/<name>.<ext>"
        )
    index: dict[str, list[Path]] = {}
    scan = scan_folder(folder)
    for path in scan.images:
        index.setdefault(name_key(path.stem), []).append(path)
    return index, scan.skipped


class FolderIndex:
    """Index of ``images/`` and ``masks/`` built with one directory scan each, so resolving the
    names of a large dataset does not rescan the folders per name. ``skipped`` holds each
    folder's entries that are not image files (:func:`~condseg.data.names.scan_folder`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        scans = {kind: _index_folder(self.root / kind) for kind in ("images", "masks")}
        self.files = {kind: scan[0] for kind, scan in scans.items()}
        self.skipped = {kind: scan[1] for kind, scan in scans.items()}

    def find(self, kind: str, name: str) -> Path:
        """The single file of ``kind`` ("images" or "masks") for ``name``; DataError otherwise."""
        candidates = self.files[kind].get(name_key(name), [])
        folder = self.root / kind
        if len(candidates) > 1:
            listed = ", ".join(str(p) for p in candidates)
            raise DataError(f"ambiguous {kind[:-1]} for {name!r}: {listed}; keep only one of them")
        if not candidates:
            hint = ""
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                hint = " (split files list names without extension)"
            raise DataError(
                f"no {kind[:-1]} file for {name!r} in {folder} "
                f"(looked for {name}.{{{','.join(e[1:] for e in IMAGE_EXTENSIONS)}}}){hint}"
            )
        return candidates[0]

    def pair(self, name: str) -> tuple[Path, Path]:
        """(image, mask) paths for ``name``."""
        return self.find("images", name), self.find("masks", name)


def find_pair(root: str | Path, name: str) -> tuple[Path, Path]:
    """``(images/<name>.<ext>, masks/<name>.<ext>)``; the two extensions may differ."""
    return FolderIndex(root).pair(name)


def _too_large(path: str | Path, kind: str, pixels: int, limit: int) -> DataError:
    return DataError(
        f"{kind} {path} has {pixels:,} pixels, more than the limit of {limit:,} (a decompression "
        "bomb or an unusually large scan); if it is genuine, raise the limit: max_pixels=N "
        "(CLI: --max-pixels N, config: data.max_pixels=N)"
    )


def read_values(
    path: str | Path, kind: str = "image", max_pixels: int | None = None
) -> tuple[np.ndarray, int]:
    """Pixel values as displayed (EXIF orientation applied) and the format's maximum value
    (1, 255 or 65535); ``kind`` ("image" or "mask") only words the messages.

    The values are (H, W) grey, (H, W, 3) RGB, or either with the alpha plane last ((H, W, 2),
    (H, W, 4)) when the file has transparency: palettes, CMYK and other modes are read as the
    colours they display. The file is decoded fully, so truncated files fail here with a message
    naming them. An image of more than ``max_pixels`` pixels (None: :data:`MAX_PIXELS`) is
    refused from its header, and so is a file of several frames.
    """
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        return _read_pillow(path, kind, limit)
    except (OSError, ValueError, SyntaxError) as exc:
        if Path(path).suffix.lower() in TIFF_EXTENSIONS and Path(path).is_file():
            return _read_tifffile(path, kind, limit)
        raise DataError(
            f"cannot read {kind} {path}: {exc}; replace the file or leave its name out"
        ) from exc


def _open(path: str | Path, kind: str) -> Image.Image:
    """Pillow's lazy open (the header only). Its decompression-bomb warning is silenced since
    the pixel limit applied is ours; its error (above twice its own limit) names the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except Image.DecompressionBombError as exc:
            raise DataError(
                f"{kind} {path} is refused as a possible decompression bomb ({exc}); if it is "
                "genuine, raise PIL.Image.MAX_IMAGE_PIXELS and max_pixels"
            ) from exc


def _one_frame(frames: int, path: str | Path, kind: str) -> None:
    """Refuse an animation (GIF, APNG, WebP) or a stack (multi-page TIFF)."""
    if frames > 1:
        raise DataError(
            f"{kind} {path} has {frames} frames (an animation or a stack), and which one is "
            "meant would be a guess; save that frame as a file of its own"
        )


def _read_pillow(path: str | Path, kind: str, limit: int) -> tuple[np.ndarray, int]:
    with _open(path, kind) as im:
        if im.width * im.height > limit:
            raise _too_large(path, kind, im.width * im.height, limit)
        # MPO (a camera JPEG with extra pictures): the first is the primary image by standard.
        _one_frame(1 if im.format == "MPO" else getattr(im, "n_frames", 1), path, kind)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        return _full_scale(im, path, kind)


def _read_tifffile(path: str | Path, kind: str, limit: int) -> tuple[np.ndarray, int]:
    """The single page of a TIFF that Pillow cannot open, samples last (an alpha sample kept
    last), orientation applied."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            _one_frame(len(tif.pages), path, kind)
            page = tif.pages[0]
            if sorted(page.axes) not in (["X", "Y"], ["S", "X", "Y"]):
                raise DataError(f"{kind} {path} is not a 2-D image (TIFF axes {page.axes})")
            photometric = page.photometric.name
            if photometric not in ("MINISBLACK", "MINISWHITE", "RGB"):
                raise DataError(f"{kind} {path} is a {photometric} TIFF that Pillow cannot "
                                "read; save it as grey or RGB")
            height, width = (page.shape[page.axes.index(a)] for a in "YX")
            if height * width > limit:
                raise _too_large(path, kind, height * width, limit)
            values = page.asarray()
            orientation = page.tags.get(274)
            axes, extra = page.axes, tuple(page.extrasamples)
    except DataError:
        raise
    except Exception as exc:  # any failure of the decoder on this file is the file's problem
        raise DataError(
            f"cannot read {kind} {path}: {exc}; replace the file or leave its name out"
        ) from exc
    colour, alpha = 1, False
    if "S" in axes:
        values = np.moveaxis(values, axes.index("S"), -1)
        colour = 3 if values.shape[-1] >= 3 else 1
        alpha = values.shape[-1] > colour and extra[:1] in ((1,), (2,))  # ExtraSamples: alpha
        values = values[..., : colour + alpha] if colour + alpha > 1 else values[..., 0]
    if orientation is not None and orientation.value in _ORIENTATIONS:
        values = _ORIENTATIONS[orientation.value](values)
    full = {np.dtype(bool): 1, np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}.get(
        values.dtype
    )
    if full is None:
        raise DataError(f"{kind} {path} has {values.dtype} samples; save it as 8- or 16-bit")
    values = np.ascontiguousarray(values, dtype=np.uint8 if full == 1 else values.dtype)
    if photometric == "MINISWHITE":  # 0 is white: the colour samples are stored inverted
        if values.ndim == 2:
            values = full - values
        else:
            values[..., :colour] = full - values[..., :colour]
    return values, full


def _full_scale(im: Image.Image, path: str | Path, kind: str) -> tuple[np.ndarray, int]:
    """Pixel array and the maximum value of its format (1, 255 or 65535)."""
    if im.mode == "1":
        return np.asarray(im.convert("L")) // 255, 1
    if im.mode in _MODES_16BIT:
        values = np.asarray(im)
        if values.min() < 0 or values.max() > 65535:
            raise DataError(f"{kind} {path} has 32-bit values; save it as 8- or 16-bit")
        if im.format == "TIFF" and im.tag_v2.get(262) == 0:  # WhiteIsZero, which Pillow
            return 65535 - values.astype(np.uint16), 65535  # inverts below 16 bit only
        return values.astype(np.uint16), 65535
    if im.mode in ("F", "I;32", "I;32B", "I;32L"):
        raise DataError(f"{kind} {path} is a {im.mode} image; save it as 8- or 16-bit")
    # Palette, premultiplied alpha, CMYK, YCbCr, LAB...: the colours they display, with the
    # transparency they have (an alpha band, a palette's transparent index, a colour key) as
    # an alpha plane.
    grey = im.getbands()[0] == "L"
    if "transparency" in im.info or {"A", "a"} & set(im.getbands()):
        mode = "LA" if grey else "RGBA"
    else:
        mode = "L" if grey else "RGB"
    return np.array(im if im.mode == mode else im.convert(mode)), 255


def colour_and_alpha(values: np.ndarray, full: int) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`read_values`' colour planes ((H, W) or (H, W, 3)) and its alpha plane (None when
    there is none or it is entirely opaque)."""
    if values.ndim == 2 or values.shape[2] == 3:
        return values, None
    colour = values[:, :, 0] if values.shape[2] == 2 else values[:, :, :3]
    alpha = values[:, :, -1]
    return colour, (alpha if (alpha < full).any() else None)


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """An 8-bit RGB (H, W, 3) array: grey is replicated, alpha dropped, palettes expanded and
    16-bit values rounded to 8 bit, so every model sees the same input format.

    Raises :class:`DataError` naming the file for anything that cannot be used: a missing,
    empty, truncated or non-image file, a looping symbolic link, an animation, more than
    ``max_pixels`` pixels (None: :data:`MAX_PIXELS`).
    """
    values, full = read_values(path, "image", max_pixels)
    values, _ = colour_and_alpha(values, full)
    if full != 255:
        values = np.round(values.astype(np.float32) * (255.0 / full)).astype(np.uint8)
    if values.ndim == 2:
        values = np.repeat(values[:, :, None], 3, axis=2)
    return np.ascontiguousarray(values)


def read_mask_values(path: str | Path, max_pixels: int | None = None) -> tuple[np.ndarray, int]:
    """Grey mask values (H, W) and the format's full scale.

    Colour masks are reduced by the maximum over channels, not luminance, so a mask drawn in
    pure red or blue is still foreground (luminance of pure blue is only 29 of 255). A mask with
    transparency is read as displayed over black (transparent is background), except when every
    pixel has the same colour: the alpha plane is then the mask (a mask drawn only in alpha).
    """
    values, full = read_values(path, "mask", max_pixels)
    values, alpha = colour_and_alpha(values, full)
    if alpha is not None:
        if (values == values.flat[0]).all():
            values = alpha
        else:
            weight = alpha[:, :, None] if values.ndim == 3 else alpha
            values = ((values.astype(np.uint32) * weight + full // 2) // full).astype(alpha.dtype)
    if values.ndim == 3:  # elementwise maximum of the planes is ~10x faster than max(axis=2)
        values = np.maximum.reduce([values[:, :, c] for c in range(values.shape[2])])
    return values, full


def mask_threshold(full: int) -> int:
    """Smallest foreground value: half of the format's range (128 for 8 bit, 32768 for 16 bit)."""
    return (full + 1) // 2


def read_mask(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Boolean (H, W) mask: foreground where the value is at least half of the format's range,
    so JPEG artefacts around 0 and 255 binarise correctly."""
    values, full = read_mask_values(path, max_pixels)
    return values >= mask_threshold(full)


def image_size(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(H, W) as displayed (EXIF orientation applied) from the header alone, without decoding;
    more than ``max_pixels`` pixels (None: :data:`MAX_PIXELS`) and several frames are refused
    as by the readers."""
    try:
        with _open(path, "image") as im:
            # The stored size: Pillow >= 11 reports a TIFF's size already oriented.
            width, height = (im.tag_v2[256], im.tag_v2[257]) if im.format == "TIFF" else im.size
            rotated = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            frames = 1 if im.format == "MPO" else getattr(im, "n_frames", 1)
    except (OSError, ValueError, SyntaxError) as exc:
        if Path(path).suffix.lower() not in TIFF_EXTENSIONS or not Path(path).is_file():
            raise DataError(f"cannot read image {path}: {exc}") from exc
        height, width, rotated, frames = _tiff_size(path)
    _one_frame(frames, path, "image")
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if height * width > limit:
        raise _too_large(path, "image", height * width, limit)
    return (width, height) if rotated else (height, width)


def _tiff_size(path: str | Path) -> tuple[int, int, bool, int]:
    """(H, W, transposed by its orientation tag, pages) of a TIFF's first page, read with
    tifffile."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            orientation = page.tags.get(274)
            height, width = (page.shape[page.axes.index(a)] for a in "YX")
            pages = len(tif.pages)
    except Exception as exc:  # any failure of the decoder on this file is the file's problem
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return height, width, orientation is not None and orientation.value in (5, 6, 7, 8), pages


Transform = Callable[..., dict[str, Any]]


class SegmentationDataset(Dataset):
    """Image/mask pairs of one split, resized to ``size``x``size`` and normalised.

    The pair is resized first and augmented at the target size (far cheaper than augmenting
    1920x1072 frames). Each of ``views`` adds an extra named view of the same geometrically
    augmented image (ConDSeg's stage-1 strong photometric view), drawn per sample; the mask is
    shared. ``mean``/``std`` are the model's (None: scale to [0, 1] only, as the authors' code).
    ``max_pixels`` is the readers' pixel limit (None: :data:`MAX_PIXELS`).
    """

    def __init__(
        self,
        root: str | Path,
        split_or_names: str | Sequence[str],
        size: int = 256,
        augment: Transform | None = None,
        views: Mapping[str, Transform] | None = None,
        *,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        exclude: Iterable[str] = (),
        max_pixels: int | None = None,
    ) -> None:
        self.root = Path(root)
        names = (
            read_split(self.root, split_or_names)
            if isinstance(split_or_names, str)
            else list(split_or_names)
        )
        skip = set(exclude)
        self.names = [n for n in names if n not in skip]
        self.excluded = [n for n in names if n in skip]
        if not self.names:
            raise DataError(f"no names to load from {self.root} ({split_or_names!r})")
        index = FolderIndex(self.root)
        self.pairs = [index.pair(n) for n in self.names]
        self.size = size
        self.augment = augment
        self.views = dict(views or {})
        reserved = {"image", "mask", "name"} & set(self.views)
        if reserved:
            raise DataError(f"view names {sorted(reserved)} are reserved; rename the view")
        self.mean, self.std = mean, std
        self.max_pixels = max_pixels
        self._sizes: dict[int, tuple[int, int]] = {}
        self._seeded_for: object = None

    def __len__(self) -> int:
        return len(self.names)

    def original_size(self, i: int) -> tuple[int, int]:
        """(H, W) of image ``i`` before resizing, read from its header."""
        if i not in self._sizes:
            self._sizes[i] = image_size(self.pairs[i][0], self.max_pixels)
        return self._sizes[i]

    def _reseed(self) -> None:
        """Give each DataLoader worker its own augmentation stream.

        Albumentations keeps its random state inside each Compose; forked workers would all
        inherit the same state and repeat each other's augmentations. Unseeded transforms are
        seeded from torch's per-process seed, which also makes runs reproducible under
        ``torch.manual_seed`` / Lightning's ``seed_everything``.
        """
        info = get_worker_info()
        key = (info.id, info.seed) if info is not None else "main"
        if key == self._seeded_for:
            return
        self._seeded_for = key
        base = info.seed if info is not None else torch.initial_seed()
        transforms = (self.augment, *self.views.values())
        seeds = np.random.SeedSequence(base % 2**63).generate_state(max(2, len(transforms)))
        for transform, seed in zip(transforms, seeds, strict=False):
            if transform is not None and getattr(transform, "seed", 0) is None:
                transform.set_random_seed(int(seed))

    def __getitem__(self, i: int) -> dict[str, Any]:
        self._reseed()
        image_path, mask_path = self.pairs[i]
        image = read_image(image_path, self.max_pixels)
        mask = read_mask(mask_path, self.max_pixels)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"image {image_path} is {image.shape[0]}x{image.shape[1]} but mask {mask_path} "
                f"is {mask.shape[0]}x{mask.shape[1]} (HxW); fix the pair or leave it out"
            )
        image, target = resize_image(image, self.size), resize_mask(mask, self.size)
        if self.augment is not None:
            out = self.augment(image=image, mask=target)
            image, target = out["image"], out["mask"]
        item = {
            "image": to_tensor(image, self.mean, self.std),
            "mask": torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)[None]),
            "name": self.names[i],
        }
        for key, view in self.views.items():
            item[key] = to_tensor(view(image=image)["image"], self.mean, self.std)
        return item
