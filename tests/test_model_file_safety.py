"""Model files and checkpoints from elsewhere: a forged header, a truncated or forged
.safetensors, a code-executing pickle — each one clear error line, no allocation, no code run."""

from __future__ import annotations

import ast
import builtins
import json
import math
import resource
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from condseg.cli import app
from condseg.convert import load_official
from condseg.errors import ConversionError, ModelFileError
from condseg.models.model_file import load_model, read_header, save_model
from condseg.models.registry import create_model

SRC = Path(__file__).resolve().parents[1] / "src" / "condseg"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    net = create_model("condseg", encoder="resnet18", width=16)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_model(path, net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=64)


def forged(source: Path, target: Path, header: object) -> Path:
    """``source``'s weights under another condseg header."""
    with safe_open(str(source), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    save_file(tensors, str(target), metadata={"condseg": json.dumps(header)})
    return target


def header_with(model_file: Path, **changes: object) -> dict:
    return {**read_header(model_file), **changes}


ARCH = {"name": "condseg", "options": {"encoder": "resnet18", "width": 16}}
FORGED = {
    "not-an-object": ([1, 2], "expected a JSON object, found list"),
    "version-text": ({"format_version": "1"}, "format_version must be a positive int"),
    "arch-name": ({"arch": {"name": 3}}, "arch must be an object with a name"),
    "nested-option": ({"arch": {**ARCH, "options": {"width": [[[[[[[1]]]]]]]}}},
                      "arch.options must"),
    "weights-option": ({"arch": {**ARCH, "options": {"weights": "/etc/passwd"}}},
                       "may not name pretrained or weights"),
    "member-weights": ({"arch": {"name": "ensemble", "options": {"members": [
        {"name": "condseg", "options": {"pretrained": True}}]}}},
        "may not name pretrained or weights"),
    "zero-size": ({"input_size": [0, 64]}, r"input_size must be \[H, W\]"),
    "huge-size": ({"input_size": [10**9, 10**9]}, r"ints from 1 to 8192"),
    "bool-size": ({"input_size": [True, 64]}, "input_size must be"),
    "one-size": ({"input_size": [64]}, "input_size must be"),
    "zero-std": ({"std": [0.0, 1.0, 1.0]}, "std must be positive"),
    "nan-mean": ({"mean": [math.nan, 0.5, 0.5]}, "mean must be null or 3 finite numbers"),
    "two-std": ({"std": [1.0, 1.0]}, "std must be null or 3 finite numbers"),
    "std-alone": ({"mean": None}, "mean and std must both be null or both be given"),
    "unknown-option": ({"arch": {**ARCH, "options": {"no_such_option": 1}}},
                       "cannot be built with the header's options"),
    "other-encoder": ({"arch": {**ARCH, "options": {"encoder": "resnet50", "width": 16}}},
                      "do not match architecture 'condseg'"),
}


@pytest.mark.parametrize("case", FORGED)
def test_a_forged_header_is_one_error_line(model_file: Path, tmp_path: Path, case: str) -> None:
    changes, message = FORGED[case]
    header = changes if isinstance(changes, list) else header_with(model_file, **changes)
    path = forged(model_file, tmp_path / f"{case}.safetensors", header)
    with pytest.raises(ModelFileError, match=message) as error:
        load_model(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_options_of_a_huge_network_allocate_nothing(model_file: Path, tmp_path: Path) -> None:
    """width 512 would be a ~2.5 GB network: it is compared on the meta device, never built."""
    arch = {**ARCH, "options": {"encoder": "resnet18", "width": 512}}
    path = forged(model_file, tmp_path / "wide.safetensors", header_with(model_file, arch=arch))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ModelFileError, match=r"do not match architecture.*of another shape"):
        load_model(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000


def _safetensors(path: Path, header: dict, data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_truncated_or_forged_safetensors_are_named(model_file: Path, tmp_path: Path) -> None:
    data = model_file.read_bytes()
    meta = {"__metadata__": {"condseg": json.dumps(read_header(model_file))}}
    files = {
        "truncated": data[: len(data) // 2],
        "garbage": b"\x00\x01 not a model " * 10,
        "empty": b"",
        "huge-length": struct.pack("<Q", 2**62) + b"{}",
    }
    paths = [tmp_path / f"{name}.safetensors" for name in files]
    for path, content in zip(paths, files.values(), strict=True):
        path.write_bytes(content)
    paths.append(_safetensors(tmp_path / "beyond-end.safetensors", {
        **meta, "w": {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 4 * 10**10]}
    }, b"\x00" * 16))
    for path in paths:
        with pytest.raises(ModelFileError, match="is not a safetensors file or is truncated") as e:
            load_model(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


class Evil:
    """Unpickling this creates the marker file: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return builtins.open, (self.marker, "w")


@pytest.fixture
def evil_pth(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "authors.pth"
    torch.save({"cdfa1.v.weight": torch.zeros(1), "payload": Evil(marker)}, path)
    torch.load(path, weights_only=False)  # the file really runs code when unpickled...
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_a_code_executing_pickle_is_refused_everywhere(
    evil_pth: tuple[Path, Path], tmp_path: Path
) -> None:
    path, marker = evil_pth
    with pytest.raises(ConversionError, match=r"authors\.pth holds Python objects.*io\.open"):
        load_official(path)
    result = CliRunner().invoke(app, ["convert-official", str(path), str(tmp_path / "o.st")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and result.output.count("\n") == 1
    assert "refused unread" in result.output
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        load_model(path)
    assert not marker.exists() and not (tmp_path / "o.st").exists()


def _calls(tree: ast.AST, owners: set[str], names: set[str]) -> list[ast.Call]:
    return [
        node for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr in names
        and isinstance(node.func.value, ast.Name) and node.func.value.id in owners
    ]


def test_every_pickle_read_in_src_is_weights_only() -> None:
    """torch < 2.6 (which the package allows) unpickled anything by default."""
    torch_loads = []
    for file in sorted(SRC.rglob("*.py")):
        tree = ast.parse(file.read_text(), str(file))
        for call in _calls(tree, {"torch"}, {"load"}):
            flags = {k.arg: k.value for k in call.keywords}
            ok = isinstance(flags.get("weights_only"), ast.Constant) and flags[
                "weights_only"].value is True
            assert ok, f"{file}:{call.lineno}: torch.load without weights_only=True"
            torch_loads.append(file.name)
        unsafe = _calls(tree, {"pickle", "dill", "cloudpickle", "joblib"}, {"load", "loads"})
        assert not unsafe, f"{file}:{unsafe[0].lineno}: unpickles"
        for call in _calls(tree, {"np", "numpy"}, {"load"}):
            assert not any(k.arg == "allow_pickle" for k in call.keywords), file
    assert "convert.py" in torch_loads  # the scan sees the reads it guards
