"""Shared test fixtures: paths to ../shared (reference outputs, real data) beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference"
KVASIR = SHARED / "data" / "kvasir-seg"

torch.set_num_threads(max(torch.get_num_threads(), 1))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "deterministic_weights.py").is_file():
        pytest.skip(f"reference fixtures not found at {REFERENCE} (they live in ../shared)")
    return REFERENCE


@pytest.fixture(scope="session")
def kvasir_dir() -> Path:
    if not (KVASIR / "train.txt").is_file():
        pytest.skip(f"Kvasir-SEG not found at {KVASIR} (real data lives in ../shared/data)")
    return KVASIR
