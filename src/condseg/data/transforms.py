"""Augmentations (albumentations), resizing and normalisation shared by training and inference."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from condseg.registry import Registry


def geometric_augmentation(
    rotate: float = 90.0,
    p_rotate: float = 0.5,
    p_flip: float = 0.5,
    seed: int | None = None,
    *,
    p_vflip: float | None = None,
    scale: tuple[float, float] = (1.0, 1.0),
    shear: float = 0.0,
    shift: float = 0.0,
) -> A.Compose:
    """Rotation by up to ±``rotate`` degrees, a horizontal flip with probability ``p_flip`` and
    a vertical one with ``p_vflip`` (None: ``p_flip``), applied jointly to ``image`` and
    ``mask``. With a ``scale`` range, a ``shear`` (± degrees, each axis) or a ``shift``
    (± fraction of each side), the rotation becomes one affine transform with them (one
    interpolation), with the same probability. The mask uses nearest interpolation so it stays
    binary (or keeps its class ids); the corners the transform uncovers are 0 in both (black
    image, background)."""
    borders = {"interpolation": cv2.INTER_LINEAR, "mask_interpolation": cv2.INTER_NEAREST,
               "border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0, "p": p_rotate}
    if tuple(scale) == (1.0, 1.0) and shear == 0 and shift == 0:
        transform = A.Rotate(limit=(-rotate, rotate), **borders)
    else:
        transform = A.Affine(
            scale=tuple(scale), rotate=(-rotate, rotate),
            shear={"x": (-shear, shear), "y": (-shear, shear)},
            translate_percent={"x": (-shift, shift), "y": (-shift, shift)}, **borders,
        )
    vflip = p_flip if p_vflip is None else p_vflip
    return A.Compose(
        [transform, A.HorizontalFlip(p=p_flip), A.VerticalFlip(p=vflip)], seed=seed
    )


def strong_photometric(seed: int | None = None) -> A.Compose:
    """The stage-1 strong view X' (DESIGN §5): colour jitter (brightness, contrast, saturation
    0.3, hue 0.1) always, grey with p 0.5, then a 7x7 Gaussian blur with sigma in [0.1, 3]
    always (as torchvision's GaussianBlur, which has no probability of its own)."""
    return A.Compose(
        [
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1, p=1.0),
            A.ToGray(num_output_channels=3, p=0.5),
            A.GaussianBlur(blur_limit=(7, 7), sigma_limit=(0.1, 3.0), p=1.0),
        ],
        seed=seed,
    )


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize to ``size`` (int or (H, W)): area averaging when shrinking (no aliasing of
    high-resolution frames), bilinear when enlarging."""
    height, width = _hw(size)
    if image.shape[:2] == (height, width):
        return image
    shrink = image.shape[0] >= height and image.shape[1] >= width
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask to a uint8 {0, 1} target: area interpolation of the float mask,
    then threshold at 0.5, so a thin structure keeps the share of pixels it covers."""
    height, width = _hw(size)
    area = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    return (area >= 0.5).astype(np.uint8)


def resize_labels(ids: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a class-id mask (uint8, the ignore id included) to ``size`` by nearest neighbour
    (OpenCV's exact form, pixel centres as PIL and torch's nearest-exact): an id is never
    averaged with its neighbour's into a third class."""
    height, width = _hw(size)
    if ids.shape[:2] == (height, width):
        return ids
    return cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


def to_tensor(
    image: np.ndarray, mean: Sequence[float] | None, std: Sequence[float] | None
) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W): scaled to [0, 1], then (x - mean) / std.
    ``mean``/``std`` None leaves [0, 1] (what the authors' code feeds its networks)."""
    x = image.astype(np.float32) / 255.0
    if mean is not None:
        x -= np.asarray(mean, dtype=np.float32)
    if std is not None:
        x /= np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def resize_probabilities(probs: torch.Tensor, shape: Sequence[int]) -> np.ndarray:
    """(K, h, w) probability maps -> float32 (K, H, W) at ``shape`` (bilinear), in [0, 1]."""
    size = (int(shape[0]), int(shape[1]))
    stacked = probs[None].float()
    if tuple(stacked.shape[-2:]) != size:
        stacked = F.interpolate(stacked, size=size, mode="bilinear", align_corners=False)
    return stacked[0].clamp(0, 1).numpy().astype(np.float32)


#: Extra named views of a training sample (a stage lists them in ``views``): builders of an
#: albumentations transform applied to the geometrically augmented image.
VIEWS: Registry[Callable[[], A.Compose]] = Registry("view")
VIEWS.register("strong", strong_photometric, description=(
    "ConDSeg's strong photometric view: colour jitter, grey p 0.5, Gaussian blur"))
