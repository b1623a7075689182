"""Pictures for people: mask overlays, probability heat maps (ConDSeg's SID maps) and curves.

Everything returns or writes plain uint8 RGB images so the results open in any viewer;
matplotlib is used through its Agg canvas only, never through pyplot's global state.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

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
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"overlay needs a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}"
        )
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


def heatmap(prob: np.ndarray) -> np.ndarray:
    """A probability map in [0, 1] as a uint8 RGB colour map (blue 0 → red 1)."""
    if prob.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D probability map, got shape {prob.shape}")
    grey = np.rint(np.clip(prob, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a grey (H, W) or RGB (H, W, 3) uint8 image. Encoded by OpenCV but written by
    Python, so that a failed write (a full disk, no permission) is an OSError naming the file
    and the cause, where ``cv2.imwrite`` only returns False."""
    path = Path(path)
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    encoded, data = cv2.imencode(path.suffix or ".png", pixels)
    if not encoded:
        raise ValueError(f"OpenCV cannot encode a {image.dtype} {image.shape} image as {path}")
    try:
        path.write_bytes(data.tobytes())
    except OSError as error:  # a failed write() names no file
        raise OSError(error.errno, error.strerror, str(path)) from error
    return path


def map_paths(out_dir: str | Path, name: str, keys: tuple[str, ...]) -> dict[str, Path]:
    """Where :func:`save_maps` writes each map: ``<out_dir>/<name>_<key>.png``."""
    return {key: Path(out_dir) / f"{name}_{key}.png" for key in keys}


def save_maps(maps: Mapping[str, np.ndarray], out_dir: str | Path, name: str) -> list[Path]:
    """Write a model's probability maps of one image (ConDSeg: fg / bg / uc) as heat maps."""
    paths = map_paths(out_dir, name, tuple(maps))
    return [save_png(paths[key], heatmap(prob)) for key, prob in maps.items()]


def plot_curves(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Plot losses and validation metrics (``val*`` columns) per epoch from a Lightning
    ``metrics.csv``; step-level columns are dropped when their epoch mean is logged.

    Lightning's CSV logger writes one row per logging event with empty cells for the metrics
    not logged at that moment; the last value logged in each epoch is the one plotted.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    per_epoch = _read_epoch_values(Path(metrics_csv))
    for key in [k for k in per_epoch if k.endswith("_step")]:
        if key.removesuffix("_step") + "_epoch" in per_epoch:  # the epoch mean says it better
            del per_epoch[key]
    losses = sorted(k for k in per_epoch if "loss" in k)
    others = sorted(k for k in per_epoch if "loss" not in k and k.startswith("val"))
    panels = [(title, keys) for title, keys in (("loss", losses), ("validation", others)) if keys]
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
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


def _read_epoch_values(path: Path) -> dict[str, dict[int, float]]:
    """{column: {epoch: last finite value}} from a Lightning CSV log, epochs counted from 1
    (Lightning logs them from 0)."""
    if not path.is_file():
        raise FileNotFoundError(f"training log {path} not found")
    values: dict[str, dict[int, float]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "epoch" not in reader.fieldnames:
            raise ValueError(f"{path} is not a Lightning metrics.csv (no 'epoch' column)")
        for row in reader:
            if not row["epoch"]:
                continue
            epoch = int(float(row["epoch"])) + 1
            for key, cell in row.items():
                if key in ("epoch", "step") or not cell:
                    continue
                value = float(cell)
                if math.isfinite(value):
                    values.setdefault(key, {})[epoch] = value
    return values


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
) -> Path:
    """One row per image: the image, its ground truth (white on black) and each method's
    predicted mask over the image, as in the ConDSeg paper's Fig. 2.

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
        cells = [(image, name), (truth, "")]
        for method in methods:
            caption = captions[method][r] if captions and method in captions else ""
            cells.append((overlay(image, predictions[method][r]), caption))
        for c, (ax, (pixels, caption)) in enumerate(zip(axes[r], cells, strict=True)):
            if pixels.ndim == 2:  # the ground truth, a boolean mask
                ax.imshow(pixels.astype(np.uint8), cmap="gray", vmin=0, vmax=1,
                          interpolation="nearest")
            else:
                ax.imshow(pixels, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(_plain(headers[c]), fontsize="medium")
            ax.set_xlabel(_plain(caption), fontsize="small")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


def plot_validation_curves(
    logs: Mapping[str, str | Path], out_png: str | Path, keys: Sequence[str] = ("val/mdsc",
                                                                            "val/loss")
) -> list[str]:
    """Validation mDSC and loss per epoch, one line per run, one panel per metric (the
    ConDSeg paper's Fig. 5) from each run's Lightning ``metrics.csv``.

    Logs that cannot be read or hold no validation values are left out; the labels drawn are
    returned. Raises ValueError (and writes nothing) when no log has any.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    values: dict[str, dict[str, dict[int, float]]] = {}
    for label, path in logs.items():
        try:
            per_epoch = _read_epoch_values(Path(path))
        except ValueError:
            continue
        if any(per_epoch.get(key) for key in keys):
            values[label] = per_epoch
    if not values:
        raise ValueError(f"no training log has {' or '.join(keys)} values")
    fig = Figure(figsize=(6 * len(keys), 4), constrained_layout=True)
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys, start=1):
        ax = fig.add_subplot(1, len(keys), i)
        for label, per_epoch in values.items():
            series = per_epoch.get(key, {})
            epochs = sorted(series)
            ax.plot(epochs, [series[e] for e in epochs], marker=".", label=_plain(label))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(_CURVE_TITLES.get(key, key))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return list(values)


_CURVE_TITLES = {"val/mdsc": "validation mDSC", "val/loss": "validation loss",
                 "val/miou": "validation mIoU"}


def _plain(text: str) -> str:
    """Text shown as written: matplotlib would read ``$...$`` as mathtext and hide legend
    labels that start with an underscore."""
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text
