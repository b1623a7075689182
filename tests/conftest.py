"""Shared test fixtures: paths to ../shared (reference outputs, real data) beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference"
KVASIR = SHARED / "data" / "kvasir-seg"

torch.set_num_threads(max(torch.get_num_threads(), 1))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cpu-bf16", choices=("machine", "native", "emulated"), default="machine",
        help="what condseg takes this CPU's bf16 to be (in the test process): native as on a CPU "
             "with AVX512-BF16 or AMX, emulated as on one without, so that `precision: auto` and "
             "the inference default resolve as they would there; machine: as this CPU is")


@pytest.fixture(autouse=True)
def _cpu_bf16(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the suite as on the other kind of CPU: an expectation that depends on what `auto`
    resolves to then fails on any machine, not only on the kind it was not made on."""
    choice = request.config.getoption("--cpu-bf16")
    if choice != "machine":
        native = choice == "native"
        for where in ("condseg.inference.engine", "condseg.training.recipe"):
            monkeypatch.setattr(f"{where}.cpu_supports_bf16", lambda: native)


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


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory) -> Path:
    """A VGG-16 state dict in torchvision's key names and shapes (random He-scaled values; of
    the classifier only its last layer, which LossNet must ignore)."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    with torch.device("meta"):
        layout = torchvision.models.vgg16(weights=None).state_dict()
    state = {k: torch.randn(v.shape) * (2 / v[0].numel()) ** 0.5 if v.ndim > 1 else
             torch.zeros(v.shape) for k, v in layout.items()
             if k.startswith(("features.", "classifier.6."))}
    path = tmp_path_factory.mktemp("vgg") / "vgg16.safetensors"
    save_file(state, path)
    return path


# The synthetic dataset and the small model file that the fault tests share (each test module
# makes its own; a module that needs others defines fixtures of these names itself).
@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from condseg.data.synthetic import synthesize

    return synthesize(tmp_path_factory.mktemp("synth"), n_train=8, n_val=4, size=64)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from condseg.models.model_file import save_model
    from condseg.models.registry import create_model

    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    model = create_model("condseg-net0", encoder="resnet18")
    save_model(path, model, mean=[0.5] * 3, std=[0.25] * 3, input_size=32)
    return path
