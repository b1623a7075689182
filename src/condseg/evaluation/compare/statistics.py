"""Paired statistics of a comparison: every later input against the first (the reference) on
each dataset column both were evaluated on, image by image (:mod:`condseg.evaluation.stats`)."""

from __future__ import annotations

from collections.abc import Sequence

from condseg.evaluation.compare.result import Entry, Evaluation, PairedResult
from condseg.evaluation.stats import paired_test


def paired_statistics(entries: Sequence[Entry]) -> tuple[list[PairedResult], list[str]]:
    """Every later input against the first on each column evaluated on the same images."""
    reference, results, notes = entries[0], [], []
    for entry in entries[1:]:
        for evaluation in entry.evaluations:
            base = reference.evaluation(evaluation.column)
            why = _not_paired(base, evaluation, reference.label)
            if why:
                notes.append(f"no statistics for {entry.label} on {evaluation.column}: {why}")
                continue
            assert base is not None
            names = sorted(base.per_image)
            test = paired_test([evaluation.per_image[n].get("dice") for n in names],
                               [base.per_image[n].get("dice") for n in names])
            results.append(PairedResult(label=entry.label, column=evaluation.column, test=test))
            if test.note:
                notes.append(f"{entry.label} on {evaluation.column}: {test.note}")
    return results, notes


def _not_paired(base: Evaluation | None, other: Evaluation, reference: str) -> str:
    """Why ``other`` cannot be paired with the reference evaluation (empty when it can)."""
    if base is None:
        return f"the reference {reference} was not evaluated on it"
    ours, theirs = set(other.per_image), set(base.per_image)
    if ours != theirs:
        return (f"different images ({len(ours)} vs {len(theirs)} in the reference, "
                f"{len(ours & theirs)} in common)")
    if not ours:
        return "no images"
    return ""
