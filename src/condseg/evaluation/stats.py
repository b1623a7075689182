"""Paired statistics on per-image scores of two methods evaluated on the same images.

Mean Dice differences between methods are often smaller than the spread over images, so a
table of means alone cannot say whether a method is better. Pairing by image removes the
between-image variance: the Wilcoxon signed-rank test asks whether the per-image differences
are centred on zero (without assuming they are normal), and a bootstrap confidence interval
of the mean difference says how large the gain plausibly is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

# Resamples drawn per vectorised block, bounded so a large test set never needs more than
# about 16 MB of indices at once.
_BLOCK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class PairedTest:
    """Run minus reference on the images both have a score for."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    note: str = ""


def paired_differences(
    run: Sequence[float | None], reference: Sequence[float | None]
) -> np.ndarray:
    """``run - reference`` per image, dropping images where either score is missing, so one
    missing value never biases the pairing."""
    if len(run) != len(reference):
        raise ValueError(
            f"paired scores need the same number of images, got {len(run)} and {len(reference)}"
        )
    a = np.array([math.nan if v is None else v for v in run], dtype=np.float64)
    b = np.array([math.nan if v is None else v for v in reference], dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep] - b[keep]


def wilcoxon_p(diff: np.ndarray) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p value of the paired differences, and a note.

    Identical scores on every image carry no evidence of a difference: p is 1.0 (scipy would
    divide by zero there). Zero differences are dropped as in Wilcoxon's original method.
    """
    diff = np.asarray(diff, dtype=np.float64)
    if diff.size == 0:
        return math.nan, "no image has a score for both methods"
    if not np.any(diff):
        return 1.0, "identical scores on every image"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(sps.wilcoxon(diff, alternative="two-sided").pvalue)
    if not math.isfinite(p):
        return 1.0, "too few non-zero differences for a test"
    return p, ""


def bootstrap_ci(
    diff: np.ndarray, n_resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diff`` (images resampled with
    replacement); seeded, so the same scores always give the same interval."""
    diff = np.asarray(diff, dtype=np.float64)
    if diff.size == 0:
        return math.nan, math.nan
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need n_resamples >= 1 and 0 < level < 1, got {n_resamples}, {level}")
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // diff.size)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, block):
        stop = min(start + block, n_resamples)
        index = rng.integers(0, diff.size, size=(stop - start, diff.size))
        means[start:stop] = diff[index].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_test(
    run: Sequence[float | None],
    reference: Sequence[float | None],
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedTest:
    """Wilcoxon p value and bootstrap 95% interval of the mean per-image difference."""
    diff = paired_differences(run, reference)
    p, note = wilcoxon_p(diff)
    low, high = bootstrap_ci(diff, n_resamples=n_resamples, seed=seed)
    mean = float(diff.mean()) if diff.size else math.nan
    return PairedTest(n=int(diff.size), mean_diff=mean, ci_low=low, ci_high=high, p_value=p,
                      note=note)
