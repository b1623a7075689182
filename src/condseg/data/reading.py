"""Reading image and mask files into arrays, as they are displayed.

Files are decoded with Pillow so that EXIF orientation is honoured the same way for images and
masks (``ImageOps.exif_transpose``): a mask drawn on the displayed photo stays aligned with it.
TIFFs that Pillow cannot open (e.g. 3-sample TIFFs tagged BlackIsZero) are read with tifffile,
and their orientation tag is applied the same way. Every reader refuses an image of more than
``max_pixels`` pixels from its header, before decoding it, and a file of several frames (an
animation or a stack: which frame is meant would be a guess). What a mask's values mean:
:mod:`condseg.data.masks`; which files are images and what a name is:
:mod:`condseg.data.names`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from condseg.data.names import TIFF_EXTENSIONS
from condseg.errors import DataError
from condseg.filekind import refuse_special

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


def _too_large(path: str | Path, kind: str, pixels: int, limit: int) -> DataError:
    return DataError(
        f"{kind} {path} has {pixels:,} pixels, more than the limit of {limit:,} (a decompression "
        "bomb or an unusually large scan); if it is genuine, raise the limit: max_pixels=N "
        "(CLI: --max-pixels N, config: data.max_pixels=N)"
    )


def read_values(
    path: str | Path, kind: str = "image", max_pixels: int | None = None,
    *, indices: bool = False,
) -> tuple[np.ndarray, int]:
    """Pixel values as displayed (EXIF orientation applied) and the format's maximum value
    (1, 255 or 65535); ``kind`` ("image" or "mask") only words the messages. With ``indices``
    a palette image gives its (H, W) palette indices instead of their colours (the class ids
    of a palette label mask).

    The values are (H, W) grey, (H, W, 3) RGB, or either with the alpha plane last ((H, W, 2),
    (H, W, 4)) when the file has transparency: palettes, CMYK and other modes are read as the
    colours they display. The file is decoded fully, so truncated files fail here with a message
    naming them. An image of more than ``max_pixels`` pixels (None: :data:`MAX_PIXELS`) is
    refused from its header, and so is a file of several frames.
    """
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        return _read_pillow(path, kind, limit, indices)
    except (OSError, ValueError, SyntaxError) as exc:
        if Path(path).suffix.lower() in TIFF_EXTENSIONS and Path(path).is_file():
            return _read_tifffile(path, kind, limit)
        raise DataError(
            f"cannot read {kind} {path}: {exc}; replace the file or leave its name out"
        ) from exc


def _open(path: str | Path, kind: str) -> Image.Image:
    """Pillow's lazy open (the header only). Its decompression-bomb warning is silenced since
    the pixel limit applied is ours; its error (above twice its own limit) names the file. A
    FIFO or a device named like an image is refused unopened: opening it would wait forever."""
    refuse_special(path, kind, DataError, "replace it with the file or leave its name out")
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


def _read_pillow(
    path: str | Path, kind: str, limit: int, indices: bool = False
) -> tuple[np.ndarray, int]:
    with _open(path, kind) as im:
        if im.width * im.height > limit:
            raise _too_large(path, kind, im.width * im.height, limit)
        # MPO (a camera JPEG with extra pictures): the first is the primary image by standard.
        _one_frame(1 if im.format == "MPO" else getattr(im, "n_frames", 1), path, kind)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        if indices and im.mode in ("P", "PA"):
            return np.array(im.getchannel(0)), 255
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
