"""How probabilities are computed at inference: test-time augmentation and sliding windows.

One object for ``predict``, ``evaluate`` and the Python API. Each option wraps the model
(:class:`~condseg.inference.tta.TTA` inside :class:`~condseg.inference.sliding.SlidingWindow`,
so every window is augmented), and the wrapped model goes through the same ``probabilities``
call as a plain one: there is one inference path, whatever the options.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from condseg.errors import ModelError, OptionError
from condseg.inference.sliding import SlidingWindow
from condseg.inference.tta import TTA
from condseg.models.base import SegmentationModel, input_size, require_model


def check_threshold(threshold: float, num_classes: int = 1) -> float:
    """A mask threshold is a probability strictly between 0 and 1: at 0 or 1 (or NaN) every
    pixel, or none, would be foreground whatever the model says. A K-class model's labels are
    the argmax, so it takes none (only the default 0.5, which it does not use)."""
    if not (isinstance(threshold, int | float) and 0 < threshold < 1):
        raise OptionError(f"threshold (--threshold) must be a probability strictly between 0 "
                          f"and 1, e.g. 0.5; got {threshold!r}")
    if num_classes > 1 and threshold != 0.5:
        raise OptionError(f"a K-class model's labels are the argmax of its probabilities; "
                          f"leave out the threshold (--threshold {threshold})")
    return threshold


@dataclass(frozen=True)
class InferenceOptions:
    """``tta``: average over the four flips (``rotations``: the eight flips and 90° turns).
    ``sliding_window``: an image with a side longer than this many pixels is predicted at its
    own resolution by windows of the model's input size overlapping by ``overlap``, instead of
    being resized to the input size."""

    tta: bool = False
    rotations: bool = False
    sliding_window: int | None = None
    overlap: float = 0.25

    def __post_init__(self) -> None:
        if self.rotations and not self.tta:
            raise OptionError("rotations are a kind of test-time augmentation: set tta too "
                              "(CLI: --tta --tta-rotations)")
        window = self.sliding_window
        if window is not None and not (isinstance(window, int) and window > 0):
            raise OptionError(f"sliding_window (--sliding-window) must be a positive number of "
                              f"pixels, got {window!r}")
        if not 0 <= self.overlap < 1:
            raise OptionError(f"the window overlap (--overlap) must be in [0, 1), got "
                              f"{self.overlap!r}")

    def wrap(self, model: SegmentationModel) -> SegmentationModel:
        """``model`` with these options applied (itself when there are none)."""
        model = require_model(model)
        if self.tta:
            model = TTA(model, rotations=self.rotations)
        if self.sliding_window is not None:
            if model.meta is None:
                raise ModelError("sliding windows take the model file's input size as the "
                                 "window; load the model with condseg.load_model")
            model = SlidingWindow(model, input_size(model), overlap=self.overlap)
        return model

    def record(self) -> dict[str, object]:
        """The options as a JSON-ready mapping (evaluation protocols record it)."""
        return asdict(self)
