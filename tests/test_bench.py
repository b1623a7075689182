"""The benchmark on a tiny ConDSeg: every path measured in its own process; no timings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from condseg.bench import (
    BenchReport,
    benchmark_models,
    print_report,
    run_benchmark,
    write_json,
)
from condseg.errors import CondsegError

TINY = {"encoder": "resnet18", "width": 16}


@pytest.fixture(scope="module")
def results():
    return run_benchmark(size=64, batch_size=2, train=True, repeats=2, warmup=1, model_options=TINY,
                         threads=1, rounds=2)


def test_every_path_measured_with_positive_figures(results) -> None:
    assert [r.path for r in results] == ["default", "float32-fast", "plain"]
    for r in results:
        assert r.images_per_s > 0
        assert 0 < r.inference.min_ms <= r.inference.median_ms <= r.inference.max_ms
        assert r.train is not None and r.train.median_ms > 0
        assert len(r.inference.times_ms) == len(r.train.times_ms) == 2 * 2  # repeats × rounds
        # ru_maxrss only grows: the training peak includes the inference one
        assert 0 < r.baseline_rss_mb <= r.inference.peak_rss_mb <= r.train.peak_rss_mb
        assert (r.threads, r.size, r.batch) == (1, 64, 2)
        assert r.gflops_per_image > 0.1 and r.parameters > 1e6
    default, fast, plain = results
    assert plain.dtype == "float32" and plain.memory_format == "NCHW"
    assert plain.batchnorm_folded == 0 and plain.max_abs_diff is None
    assert plain.inference_speedup is None and plain.train_memory_ratio is None
    assert fast.dtype == "float32" and fast.memory_format == "channels_last"
    assert default.memory_format == "channels_last"
    assert plain.train_memory_format == default.train_memory_format == "NCHW"  # on the CPU
    assert fast.batchnorm_folded == default.batchnorm_folded > 50
    assert fast.max_abs_diff is not None and fast.max_abs_diff < 1e-4  # float32: the same
    assert default.max_abs_diff is not None and math.isfinite(default.max_abs_diff)
    # probabilities: a broken path (wrong weights, no channel order) would drift far beyond bf16
    assert 0 <= default.max_abs_diff < 0.2
    for r in (default, fast):
        assert r.inference_speedup == pytest.approx(
            plain.inference.median_ms / r.inference.median_ms)
        assert r.train_memory_ratio == pytest.approx(r.train.peak_rss_mb / plain.train.peak_rss_mb)


def test_json_holds_every_figure(results, tmp_path: Path) -> None:
    report = BenchReport(results, {"ensemble": "ModelError: needs members"})
    document = json.loads(write_json(report, tmp_path / "bench.json").read_text())
    assert set(document) == {"machine", "results", "skipped"}
    assert document["skipped"] == {"ensemble": "ModelError: needs members"}
    assert {"torch", "cpu_native_bf16", "cuda", "usable_cores"} <= set(document["machine"])
    first = document["results"][0]
    assert {"path", "model", "dtype", "memory_format", "parameters", "gflops_per_image",
            "batchnorm_folded", "images_per_s", "inference_speedup", "train_speedup",
            "train_memory_ratio", "max_abs_diff", "load_avg"} <= set(first)
    assert {"median_ms", "min_ms", "max_ms", "peak_rss_mb"} <= set(first["inference"])
    assert [r["path"] for r in document["results"]] == ["default", "float32-fast", "plain"]


def test_a_model_that_cannot_be_built_is_skipped_with_the_reason() -> None:
    report = benchmark_models(["ensemble"], size=64)  # refused on the meta device: no process
    assert report.results == []
    assert "members" in report.skipped["ensemble"]
    with pytest.raises(CondsegError, match="members"):
        benchmark_models("ensemble", size=64)  # one model asked for: its error is the answer


def test_table_names_the_paths(results) -> None:
    console = Console(record=True, width=200)
    print_report(BenchReport(results, {"ensemble": "needs members"}), console)
    text = console.export_text()
    assert "default" in text and "float32-fast" in text and "plain" in text
    assert "images/s" in text and "GFLOP" in text and "× plain" in text
    assert "ensemble not benchmarked: needs members" in text
    assert "median (min–max)" in text  # labels are not eaten as rich markup


def test_bad_arguments_are_named() -> None:
    with pytest.raises(CondsegError, match="unknown paths"):
        run_benchmark(paths=("fast",))
    with pytest.raises(CondsegError, match=r"batch_size \(--batch-size\) must be >= 1"):
        run_benchmark(batch_size=0)

