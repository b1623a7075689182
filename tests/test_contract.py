"""One contract test over the model registry (issue 24, point 7): every registered model × K in
{1, 3} builds and gives mask logits of K maps (one for binary), survives a model-file round trip
with the same outputs, exports to ONNX that onnxruntime runs to the same logits (with K and the
class names in its metadata), and takes one training step with a finite loss that moves its
weights — or refuses K when built, in one line naming itself. A new family gets these tests by
registering (it is then built with its default options)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from condseg.errors import ModelError
from condseg.losses.mask import mask_loss
from condseg.models.base import class_names, mask_channels
from condseg.models.model_file import load_model, save_model
from condseg.models.registry import create_model

# the packaged models, their smallest builds and the class names: test_models_classes's
from test_models_classes import NAMES, SIZE, packaged_models, tiny


def batch(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images and their targets: 0/1 masks (binary) or class ids with ignored pixels."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, SIZE, SIZE, generator=generator)
    if k == 1:
        return images, (torch.rand(2, 1, SIZE, SIZE, generator=generator) > 0.5).float()
    ids = torch.randint(0, k, (2, 1, SIZE, SIZE), generator=generator)
    ids[:, :, :4] = 255  # a band of ignored pixels
    return images, ids


@pytest.fixture(params=[1, 3], ids=["K1", "K3"])
def k(request: pytest.FixtureRequest) -> int:
    return request.param


@pytest.mark.parametrize("name", packaged_models())
def test_every_registered_model_keeps_the_contract_with_k_classes(
    name: str, k: int, tmp_path: Path
) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    from condseg.inference.export import export_onnx

    torch.manual_seed(0)
    try:
        model = create_model(name, **tiny(name, k))
    except ModelError as error:  # the refusal: K only, at build time, one line naming the model
        assert k > 1 and "\n" not in str(error) and "binary by design" in str(error), error
        return
    images, target = batch(k)
    channels = mask_channels(k)

    # forward: K maps (one for binary) at the input size, aux maps one channel
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert out.mask.shape == (2, channels, SIZE, SIZE)
    assert all(out.aux[key].shape == (2, 1, SIZE, SIZE) for key in model.map_names)

    # model file: the same network (K and class names) and the same outputs
    path = save_model(tmp_path / "m.safetensors", model, mean=None, std=None, input_size=SIZE,
                      classes=NAMES if k > 1 else None)
    loaded = load_model(path).eval()
    assert (loaded.num_classes, class_names(loaded)) == (k, tuple(NAMES) if k > 1 else None)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).mask, out.mask)

    # ONNX: K output channels, onnxruntime agrees, the metadata carries K and the names
    # (an untrained network's logits reach 1e10 in eval mode: the gap is relative to their size)
    report = export_onnx(loaded, tmp_path / "m.onnx",
                         tolerance=1e-3 + 1e-5 * float(out.mask.abs().max()))
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    (mask, *_) = session.run(None, {"image": images.numpy()})
    assert mask.shape == (2, channels, SIZE, SIZE)
    metadata = session.get_modelmeta().custom_metadata_map
    if k > 1:
        assert metadata.get("num_classes") == str(k)
        assert json.loads(metadata["classes"]) == list(NAMES)

    # one training step: a finite loss of the K-class form, every weight of the step moved
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:  # nothing to train (none of the packaged models)
        return
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    loss = mask_loss(model(images).mask, target)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable, strict=True))
