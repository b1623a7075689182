"""Seeded splits: names grouped into strata and shuffled, then cut in proportions or dealt
into k folds, so that every part holds its share of each stratum, give or take one."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from condseg.layout import DatasetDir


def _scaled(sizes: Mapping[str, float], total: int) -> dict[str, int]:
    """The stated split sizes (counts or fractions), scaled to ``total`` by largest remainder."""
    stated = sum(sizes.values())
    if total == stated:
        return {s: int(n) for s, n in sizes.items()}
    exact = {s: n * total / stated for s, n in sizes.items()}
    counts = {s: int(v) for s, v in exact.items()}
    by_remainder = sorted(sizes, key=lambda s: counts[s] - exact[s])
    for s in by_remainder[: total - sum(counts.values())]:
        counts[s] += 1
    return counts


def shuffled_strata(
    names: Sequence[str], stratum: Callable[[str], str], seed: int
) -> list[list[str]]:
    """The names grouped by stratum (in sorted stratum order), each group shuffled."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(stratum(name), []).append(name)
    return [rng.permutation(groups[key]).tolist() for key in sorted(groups)]


def proportional_cut(groups: list[list[str]], sizes: Mapping[str, float]) -> dict[str, list[str]]:
    """Consecutive parts of the strata interleaved evenly, in the proportions of ``sizes``
    (largest remainder): every part has its share of each stratum, give or take one, and the
    totals are exact."""
    keyed = [((j + 0.5) / len(g), i, n) for i, g in enumerate(groups) for j, n in enumerate(g)]
    order = [name for *_, name in sorted(keyed)]
    parts, start = {}, 0
    for split, count in _scaled(sizes, len(order)).items():
        parts[split], start = order[start : start + count], start + count
    return parts


def k_folds(groups: list[list[str]], k: int) -> dict[str, list[str]]:
    """``folds/<j>/train`` and ``folds/<j>/val`` for j < k, plus ``train``/``val`` = fold 0.

    Dealing the strata one after the other round-robin gives every fold the same number of
    each stratum, give or take one."""
    order = [name for members in groups for name in members]
    folds = [order[j::k] for j in range(k)]
    splits: dict[str, list[str]] = {}
    for j in range(k):
        train, val = DatasetDir.fold_splits(j)
        splits[train] = sorted(n for i, f in enumerate(folds) if i != j for n in f)
        splits[val] = sorted(folds[j])
    splits["train"], splits["val"] = (splits[s] for s in DatasetDir.fold_splits(0))
    return splits
