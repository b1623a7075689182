"""Pictures for people: mask overlays, probability heat maps (ConDSeg's SID maps) and curves.

Everything returns or writes plain uint8 RGB images so the results open in any viewer;
matplotlib is used through its Agg canvas only, never through pyplot's global state.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np

from condseg.files import atomic_file, write_image

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

OVERLAY_COLOR = (255, 214, 0)
CONTOUR_COLOR = (0, 255, 64)


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    prob: np.ndarray | None = None,
    *,
    alpha: float = 0.4,
    color: tuple[int, int, int] = OVERLAY_COLOR,
    contour_color: tuple[int, int, int] = CONTOUR_COLOR,
) -> np.ndarray:
    """The image with the mask tinted and its outline drawn, as uint8 RGB (H, W, 3).

    With ``prob`` the tint follows the probability, so uncertain borders show as faint tint
    outside the outline of the thresholded mask.
    """
    _check_rgb(image, "overlay")
    _check_same_size(image, mask, "mask")
    weight = mask.astype(np.float32)
    if prob is not None:
        _check_same_size(image, prob, "prob")
        weight = np.clip(prob.astype(np.float32), 0.0, 1.0)
    weight = (alpha * weight)[..., None]
    tinted = image.astype(np.float32) * (1 - weight) + np.float32(color) * weight
    out = np.ascontiguousarray(np.rint(tinted).astype(np.uint8))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(image.shape[:2]) / 256))
    cv2.drawContours(out, contours, -1, contour_color, thickness)
    return out


#: RGB of class ids 1..10 (background, id 0, is black); each has a channel that is not a
#: multiple of 32, so none equals a colour of the rule of the later ids (:func:`class_colours`).
CLASS_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                 (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


def class_colours(count: int) -> np.ndarray:
    """The fixed palette, (count, 3) uint8 RGB of class ids 0..count-1: black for the
    background, :data:`CLASS_COLOURS` for ids 1..10, and for later ids the PASCAL VOC rule
    (the id's bits spread over red, green and blue from the high bit down) — 255 distinct."""
    colours = np.zeros((count, 3), np.uint8)
    for i in range(1, count):
        if i <= len(CLASS_COLOURS):
            colours[i] = CLASS_COLOURS[i - 1]
            continue
        for bit in range(8):
            for channel in range(3):
                colours[i, channel] |= ((i >> (3 * bit + channel)) & 1) << (7 - bit)
    return colours


def colour_labels(labels: np.ndarray, count: int) -> np.ndarray:
    """Class ids (H, W) as uint8 RGB (H, W, 3) in :func:`class_colours` (an id of no class,
    e.g. 255 ignored, white)."""
    palette = np.vstack([class_colours(count), np.full((256 - count, 3), 255, np.uint8)])
    return palette[labels.astype(np.uint8)]


def class_overlay(
    image: np.ndarray, labels: np.ndarray, count: int, *, alpha: float = 0.4
) -> np.ndarray:
    """The image tinted by class (:func:`class_colours`; the background untinted) with each
    class outlined in its colour, as uint8 RGB (H, W, 3): :func:`overlay` for K classes."""
    _check_rgb(image, "overlay")
    _check_same_size(image, labels, "labels")
    colours = class_colours(count)
    weight = (alpha * (labels > 0))[..., None].astype(np.float32)
    tinted = image.astype(np.float32) * (1 - weight) + colours[labels].astype(np.float32) * weight
    out = np.ascontiguousarray(np.rint(tinted).astype(np.uint8))
    thickness = max(1, round(max(image.shape[:2]) / 256))
    for i in range(1, count):
        contours, _ = cv2.findContours((labels == i).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colours[i]), thickness)
    return out


def with_legend(image: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """``image`` (H, W, 3) with a legend below it on white: one row per class, its colour
    (:func:`class_colours`) and ``id name`` (non-ASCII characters escaped: OpenCV's fonts
    have none); widened on white when the legend is wider."""
    scale = max(0.35, min(image.shape[:2]) / 512)
    texts = [f"{i} {name}".encode("ascii", "backslashreplace").decode() for i, name in
             enumerate(names)]
    sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0] for t in texts]
    row = max(h for _, h in sizes) * 2
    width = max(image.shape[1], row + 2 * row // 4 + max(w for w, _ in sizes))
    out = np.full((image.shape[0] + row * len(texts) + row // 4, width, 3), 255, np.uint8)
    out[:image.shape[0], :image.shape[1]] = image
    for i, (text, colour) in enumerate(zip(texts, class_colours(len(names)), strict=True)):
        top = image.shape[0] + row // 4 + i * row
        cv2.rectangle(out, (row // 4, top), (row // 4 + row * 3 // 4, top + row * 3 // 4),
                      tuple(int(c) for c in colour), -1)
        cv2.putText(out, text, (row + row // 4, top + row * 5 // 8), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def heatmap(prob: np.ndarray) -> np.ndarray:
    """A probability map in [0, 1] as a uint8 RGB colour map (blue 0 → red 1)."""
    if prob.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D probability map, got shape {prob.shape}")
    grey = np.rint(np.clip(prob, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a grey (H, W) or RGB (H, W, 3) uint8 image whole; a failed write (a full disk, no
    permission) is an error naming the file, where ``cv2.imwrite`` only returns False."""
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    return write_image(Path(path), pixels)


def write_figure(fig: Figure, path: Path, **options: object) -> Path:
    """Save ``fig`` whole, in the format of ``path``'s suffix (see :func:`atomic_file`)."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), **options)
    return path


def map_paths(out_dir: str | Path, name: str, keys: tuple[str, ...]) -> dict[str, Path]:
    """Where :func:`save_maps` writes each map: ``<out_dir>/<name>_<key>.png``."""
    return {key: Path(out_dir) / f"{name}_{key}.png" for key in keys}


def save_maps(maps: Mapping[str, np.ndarray], out_dir: str | Path, name: str) -> list[Path]:
    """Write a model's probability maps of one image (ConDSeg: fg / bg / uc) as heat maps."""
    paths = map_paths(out_dir, name, tuple(maps))
    return [save_png(paths[key], heatmap(prob)) for key, prob in maps.items()]


def plot_curves(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Plot the losses and the validation scores per epoch of a stage's ``metrics.csv``
    (:mod:`condseg.epoch_log`; a Lightning log of an older run folder is converted)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    per_epoch = _read_epoch_values(Path(metrics_csv))
    losses = sorted(k for k in per_epoch if "loss" in k)
    others = sorted(k for k in per_epoch if "loss" not in k and k.startswith("val"))
    panels = [(title, keys) for title, keys in (("loss", losses), ("validation (%)", others))
              if keys]
    if not panels:
        raise ValueError(f"{metrics_csv} has no loss or val_* columns to plot")
    fig = Figure(figsize=(6 * len(panels), 4), constrained_layout=True)
    FigureCanvasAgg(fig)
    for i, (title, keys) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        for key in keys:
            epochs = sorted(per_epoch[key])
            ax.plot(epochs, [per_epoch[key][e] for e in epochs], marker=".", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return save_figure(fig, out_png)


def _read_epoch_values(path: Path) -> dict[str, dict[int, float]]:
    """{column: {epoch from 1: value}} of a stage's ``metrics.csv``."""
    from condseg.epoch_log import read_epochs

    values: dict[str, dict[int, float]] = {}
    for epoch, row in read_epochs(path).items():
        for key, value in row.items():
            values.setdefault(key, {})[epoch] = value
    return values


def _check_rgb(image: np.ndarray, what: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{what} needs a uint8 RGB image (H, W, 3), got {image.dtype} "
                         f"{image.shape}")


def _check_same_size(image: np.ndarray, other: np.ndarray, what: str) -> None:
    if other.shape[:2] != image.shape[:2]:
        raise ValueError(
            f"{what} shape {other.shape[:2]} differs from image shape {image.shape[:2]}"
        )


def prediction_grid(
    names: Sequence[str],
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    predictions: Mapping[str, Sequence[np.ndarray]],
    out_png: str | Path,
    captions: Mapping[str, Sequence[str]] | None = None,
    *,
    pdf: bool = False,
    classes: Sequence[str] | None = None,
) -> Path:
    """Write :func:`draw_prediction_grid` to ``out_png`` (and, with ``pdf``, as vector PDF
    beside it)."""
    return save_figure(draw_prediction_grid(names, images, truths, predictions, captions,
                                            classes), out_png, pdf=pdf)


def draw_prediction_grid(
    names: Sequence[str],
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    predictions: Mapping[str, Sequence[np.ndarray]],
    captions: Mapping[str, Sequence[str]] | None = None,
    classes: Sequence[str] | None = None,
) -> Figure:
    """One row per image, labelled with its name: the image, then its ground truth and each
    method's predicted mask drawn alike over the image (tint and outline), as in the ConDSeg
    paper's Fig. 2. Outlines are vector paths, so they stay sharp in a PDF. With ``classes``
    (background first) the masks are class ids, each class in its colour
    (:func:`class_colours`) and named in a legend below.

    Every cell is its own axes, so images of different sizes keep their aspect ratio.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(predictions)
    n_cols, n_rows = 2 + len(methods), len(names)
    fig = Figure(figsize=(2.2 * n_cols, 2.2 * n_rows + 0.3), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    headers = ["image", "ground truth", *methods]
    for r, (name, image, truth) in enumerate(zip(names, images, truths, strict=True)):
        masks = [truth, *(predictions[method][r] for method in methods)]
        notes = ["", *(captions[m][r] if captions and m in captions else "" for m in methods)]
        axes[r][0].imshow(image, interpolation="nearest")
        axes[r][0].set_ylabel(_plain(name), fontsize="small")
        for ax, mask, caption in zip(axes[r][1:], masks, notes, strict=True):
            if classes is None:
                draw_mask(ax, image, mask)
            else:
                draw_class_mask(ax, image, mask, len(classes))
            ax.set_xlabel(_plain(caption), fontsize="small")
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(_plain(headers[c]), fontsize="medium")
    if classes is not None:
        class_legend(fig, classes)
    return fig


def draw_class_mask(ax: Axes, image: np.ndarray, mask: np.ndarray, n_classes: int,
                    alpha: float = 0.5) -> None:
    """``image`` with each foreground class of the class-id ``mask`` tinted and outlined in its
    colour (:func:`class_colours`); the background and ignored pixels are left as they are."""
    _check_same_size(image, mask, "mask")
    colours = class_colours(n_classes).astype(np.float32) / 255
    mask = np.asarray(mask)
    drawn = (mask >= 1) & (mask < n_classes)
    tint = np.zeros((*mask.shape, 4), np.float32)
    tint[drawn, :3] = colours[mask[drawn]]
    tint[drawn, 3] = alpha
    ax.imshow(image, interpolation="nearest")
    ax.imshow(tint, interpolation="nearest")
    for class_id in range(1, n_classes):
        region = mask == class_id
        if region.any() and not region.all():  # a constant mask has no outline to draw
            ax.contour(region.astype(np.float32), levels=[0.5], linewidths=1.0,
                       colors=[tuple(colours[class_id])])


def class_legend(fig: Figure, classes: Sequence[str]) -> None:
    """A legend below the figure naming the colour of each foreground class."""
    from matplotlib.patches import Patch

    colours = class_colours(len(classes)).astype(np.float32) / 255
    handles = [Patch(facecolor=tuple(colours[i]), label=_plain(name))
               for i, name in enumerate(classes) if i > 0]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6),
               fontsize="small", frameon=False)


def draw_mask(ax: Axes, image: np.ndarray, mask: np.ndarray, alpha: float = 0.4) -> None:
    """``image`` with ``mask`` tinted (raster) and outlined (a vector contour), in the colours
    of :func:`overlay`; the one way every mask of a figure is drawn."""
    _check_same_size(image, mask, "mask")
    mask = np.asarray(mask, bool)
    tint = np.zeros((*mask.shape, 4), np.float32)
    tint[..., :3] = np.float32(OVERLAY_COLOR) / 255
    tint[..., 3] = alpha * mask
    ax.imshow(image, interpolation="nearest")
    ax.imshow(tint, interpolation="nearest")
    if mask.any() and not mask.all():  # a constant mask has no outline to draw
        ax.contour(mask.astype(np.float32), levels=[0.5], linewidths=1.0,
                   colors=[tuple(np.float32(CONTOUR_COLOR) / 255)])


def save_figure(fig: Figure, out_png: str | Path, *, pdf: bool = False) -> Path:
    """Write ``fig`` as PNG (100 dpi) and, with ``pdf``, as vector PDF with the same name;
    returns the PNG's path."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    write_figure(fig, out_png, dpi=100)
    if pdf:
        write_figure(fig, out_png.with_suffix(".pdf"))
    return out_png


class Curve(NamedTuple):
    """One run's line on one panel of :func:`plot_validation_curves`: its points, and the index
    of the first point of each later stage of the run (none: one stage, or epochs)."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    starts: tuple[int, ...] = ()


def plot_validation_curves(
    curves: Mapping[str, Mapping[str, Curve]], out_png: str | Path,
    titles: Mapping[str, str], *, xlabel: str = "epoch", integer_x: bool = True,
    pdf: bool = False,
) -> Path:
    """One panel per key of ``titles`` (its title drawn above it), one line per run (its label
    the key of ``curves``, one colour on every panel): the ConDSeg paper's Fig. 5 (validation
    mDSC and loss per epoch), or the same against what the run spent. A line is solid within a
    stage and dashed from a stage's last point to the next stage's first."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    keys = list(titles)
    fig = Figure(figsize=(6 * len(keys), 4), constrained_layout=True)
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys, start=1):
        ax = fig.add_subplot(1, len(keys), i)
        for n, (label, by_key) in enumerate(curves.items()):
            curve, colour = by_key.get(key, Curve((), ())), f"C{n % 10}"
            bounds = [0, *sorted(set(curve.starts)), len(curve.x)]
            named = False
            for a, b in itertools.pairwise(bounds):
                if a > 0 and a < len(curve.x):  # the join of two stages
                    ax.plot(curve.x[a - 1:a + 1], curve.y[a - 1:a + 1], linestyle="--",
                            color=colour)
                if b > a:
                    ax.plot(curve.x[a:b], curve.y[a:b], marker=".", color=colour,
                            label=None if named else _plain(label))
                    named = True
        ax.set_xlabel(xlabel)
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(titles[key])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return save_figure(fig, out_png, pdf=pdf)


def _plain(text: str) -> str:
    """Text shown as written: matplotlib would read ``$...$`` as mathtext and hide legend
    labels that start with an underscore."""
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text
