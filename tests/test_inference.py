"""Model files, prediction at the original resolution, batch prediction of files, ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from condseg.data.dataset import read_mask
from condseg.errors import CondsegError, DataError, ModelError, ModelFileError
from condseg.inference.predict import predict, predict_files
from condseg.models.base import ModelOutput, SegmentationModel
from condseg.models.model_file import load_model, read_header, save_model
from condseg.models.registry import create_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = 32


class Plain(SegmentationModel):
    """A stand-in model with BatchNorm returning plain mask logits (no maps, no encoder)."""

    encoder_path = None

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2),
                                 nn.Conv2d(2, 1, 1))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(self.net(x))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A narrow ConDSeg with non-trivial BatchNorm statistics, saved once for the module."""
    torch.manual_seed(0)
    model = create_model("condseg", width=16)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_model(
        path, model.eval(), mean=MEAN, std=STD, input_size=SIZE,
        metrics={"iou": np.float32(0.75)}, config={"stage": 2},
    )  # fmt: skip


@pytest.fixture(scope="module")
def model(model_path: Path) -> nn.Module:
    return load_model(model_path)


def test_round_trip_is_bitwise_and_carries_the_header(model_path: Path, model: nn.Module) -> None:
    torch.manual_seed(1)
    again = load_model(model_path)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        first, second = model(x), again(x)
    assert torch.equal(first.mask, second.mask)
    assert all(torch.equal(first.aux[k], second.aux[k]) for k in ("fg", "bg", "uc"))
    assert not again.training
    header = read_header(model_path)
    assert again.meta == {**header, "path": str(model_path.resolve())}
    assert header["arch"] == {"name": "condseg", "options": {"width": 16}}
    assert header["input_size"] == [SIZE, SIZE]
    assert header["mean"] == list(MEAN) and header["std"] == list(STD)
    assert header["metrics"] == {"iou": 0.75} and header["config"] == {"stage": 2}
    assert header["format_version"] == 1 and header["version"]


def test_save_refuses_to_overwrite(model_path: Path, model: nn.Module) -> None:
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_model(model_path, model, mean=MEAN, std=STD, input_size=SIZE)


def test_save_needs_an_arch(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="expected a condseg model"):
        save_model(tmp_path / "m.safetensors", nn.Conv2d(3, 1, 1), mean=MEAN, std=STD, input_size=8)
    with pytest.raises(ModelFileError, match="no `arch`"):
        save_model(tmp_path / "m.safetensors", Plain(), mean=MEAN, std=STD, input_size=8)
    assert not list(tmp_path.iterdir())


def test_load_errors_name_the_file(tmp_path: Path, model_path: Path) -> None:
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        load_model(missing)
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"PK\x03\x04 a zip, not safetensors")
    with pytest.raises(ModelFileError, match=r"last\.ckpt is not a safetensors file"):
        load_model(ckpt)
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(1)}, str(bare))
    with pytest.raises(ModelFileError, match=r"without a condseg header.*convert-official"):
        load_model(bare)


def _with_header(path: Path, out: Path, **changes: object) -> Path:
    """Copy of a model file whose header has ``changes`` applied."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        header = json.loads(f.metadata()["condseg"])
    header.update(changes)
    save_file(tensors, str(out), metadata={"condseg": json.dumps(header)})
    return out


def test_load_rejects_unknown_architecture_and_wrong_weights(tmp_path: Path, model_path: Path):
    unknown = _with_header(model_path, tmp_path / "u.safetensors", arch={"name": "segformer"})
    with pytest.raises(ModelFileError, match=r"unknown architecture 'segformer'.*condseg-net0"):
        load_model(unknown)
    wider = {"name": "condseg", "options": {"width": 32}}
    mismatch = _with_header(model_path, tmp_path / "w.safetensors", arch=wider)
    with pytest.raises(ModelFileError, match="do not match architecture 'condseg'"):
        load_model(mismatch)
    future = _with_header(model_path, tmp_path / "f.safetensors", format_version=99)
    with pytest.raises(ModelFileError, match=r"format 99.*upgrade condseg"):
        load_model(future)


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_predict_returns_the_original_resolution(model: nn.Module, tmp_path: Path) -> None:
    image = _photo(45, 70)
    result = predict(model, image)
    assert result.prob.shape == (45, 70) and result.prob.dtype == np.float32
    assert result.mask.dtype == bool and np.array_equal(result.mask, result.prob >= 0.5)
    assert 0.0 <= result.prob.min() <= result.prob.max() <= 1.0
    assert set(result.maps) == {"fg", "bg", "uc"}
    assert all(m.shape == (45, 70) for m in result.maps.values())
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert np.array_equal(predict(model, path).prob, result.prob)
    assert model.training is False


def test_predict_without_model_file_uses_the_divisor_and_has_no_maps() -> None:
    class Sixteen(Plain):
        input_divisor = 16

        def forward(self, x: torch.Tensor) -> ModelOutput:
            assert x.shape[-2:] == (48, 64)  # 45x70 rounded to multiples of 16
            return super().forward(x)

    result = predict(Sixteen(), _photo(45, 70))
    assert result.prob.shape == (45, 70) and result.maps == {}
    with pytest.raises(DataError, match="uint8 RGB array"):
        predict(Sixteen(), np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(ModelError, match="expected a condseg model"):
        predict(nn.Conv2d(3, 1, 1), _photo(16, 16))


def test_predict_files_reports_bad_inputs_and_writes_the_rest(
    model: nn.Module, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(40, 50), (33, 60), (64, 64)]):
        cv2.imwrite(str(images / f"img{i}.png"), _photo(h, w, seed=i))
    (images / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    (images / "notes.txt").write_text("not an image, not picked from a folder")
    extra = tmp_path / "img0.bmp"  # same output name as images/img0.png
    cv2.imwrite(str(extra), _photo(20, 20))
    out = tmp_path / "out"
    inputs = [images, extra, tmp_path / "nope.png"]

    report = predict_files(model, inputs, out, overlay=True, maps=True, batch_size=2)

    failed = {path.name: reason for path, reason in report.failed}
    assert set(failed) == {"broken.jpg", "img0.bmp", "nope.png"}
    assert "broken.jpg" in failed["broken.jpg"]
    assert "already used" in failed["img0.bmp"] and "no such file" in failed["nope.png"]
    suffixes = ["", "_overlay", "_fg", "_bg", "_uc"]
    expected = {f"img{i}{s}.png" for i in range(3) for s in suffixes}
    assert {p.name for p in report.written} == expected
    assert {p.name for p in out.iterdir()} == expected
    mask = cv2.imread(str(out / "img1.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (33, 60) and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(read_mask(out / "img1.png"), predict(model, images / "img1.png").mask)
    assert cv2.imread(str(out / "img1_overlay.png")).shape == (33, 60, 3)
    assert cv2.imread(str(out / "img2_uc.png")).shape == (64, 64, 3)

    with pytest.raises(FileExistsError, match="15 output file"):
        predict_files(model, [images], out, overlay=True, maps=True)
    again = predict_files(model, [images / "img2.png"], out, overwrite=True)
    assert [p.name for p in again.written] == ["img2.png"] and not again.failed


def test_predict_files_refuses_maps_for_a_model_without_them(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), _photo(16, 16))
    with pytest.raises(ModelError, match=r"no probability maps.*--maps"):
        predict_files(Plain(), [tmp_path / "a.png"], tmp_path / "out", maps=True)
    assert not (tmp_path / "out").exists()


def test_onnx_export_matches_pytorch(model: nn.Module, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from condseg.inference.export import export_onnx

    report = export_onnx(model, tmp_path / "tiny.onnx")
    assert report.outputs == ["mask", "fg", "bg", "uc"]
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    import onnxruntime

    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, SIZE, SIZE)  # another batch size than the traced one
    (mask,) = session.run(["mask"], {"image": x.numpy()})
    with torch.inference_mode():
        expected = model(x).mask.numpy()
    assert mask.shape == (3, 1, SIZE, SIZE)
    np.testing.assert_allclose(mask, expected, atol=1e-4)
    with pytest.raises(FileExistsError):
        export_onnx(model, report.path, verify=False)


def test_onnx_export_keeps_the_callers_training_mode(tmp_path: Path) -> None:
    from condseg.inference.export import export_onnx

    model = Plain()
    report = export_onnx(model.train(), tmp_path / "seq.onnx", size=16)
    assert model.training and all(m.training for m in model.modules())
    assert report.outputs == ["mask"] and report.max_abs_diff < 1e-5
    with pytest.raises(CondsegError, match="disagrees with PyTorch"):  # impossible tolerance
        export_onnx(model, tmp_path / "strict.onnx", size=16, tolerance=-1.0)
    assert not (tmp_path / "strict.onnx").exists()
