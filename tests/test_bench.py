"""The benchmark on a tiny ConDSeg: both paths measured in their own processes; no timings."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from condseg.bench import print_results, run_benchmark
from condseg.errors import CondsegError

TINY = {"encoder": "resnet18", "width": 16}


@pytest.fixture(scope="module")
def results():
    return run_benchmark(size=64, batch=2, train=True, repeats=2, warmup=1, model_options=TINY,
                         threads=1)


def test_both_paths_measured_with_positive_figures(results) -> None:
    assert [r.path for r in results] == ["default", "plain"]
    for r in results:
        assert r.images_per_s > 0
        assert 0 < r.inference.min_ms <= r.inference.median_ms <= r.inference.max_ms
        assert r.train is not None and r.train.median_ms > 0
        # ru_maxrss only grows: the training peak includes the inference one
        assert 0 < r.baseline_rss_mb <= r.inference.peak_rss_mb <= r.train.peak_rss_mb
        assert (r.threads, r.size, r.batch) == (1, 64, 2)
    default, plain = results
    assert plain.dtype == "float32" and plain.memory_format == "NCHW"
    assert default.memory_format == "channels_last"
    assert plain.max_abs_diff is None
    assert default.max_abs_diff is not None and math.isfinite(default.max_abs_diff)
    # probabilities: a broken path (wrong weights, no channel order) would drift far beyond bf16
    assert 0 <= default.max_abs_diff < 0.2


def test_table_names_the_paths(results) -> None:
    console = Console(record=True, width=200)
    print_results(results, console)
    text = console.export_text()
    assert "default" in text and "plain" in text and "images/s" in text
    assert "median (min–max)" in text  # labels are not eaten as rich markup


def test_bad_arguments_are_named() -> None:
    with pytest.raises(CondsegError, match="unknown paths"):
        run_benchmark(paths=("fast",))
    with pytest.raises(CondsegError, match="batch"):
        run_benchmark(batch=0)

