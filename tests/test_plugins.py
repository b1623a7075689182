"""UAFR and PDCR plug-ins (Liu et al.): the equations on hand-made cases, the vectorised loss
against a loop over Eq. 12, and the plug-ins on DeepLabV3+, U-Net and ConDSeg's encoder through
training, evaluation, prediction and ONNX export."""

from __future__ import annotations

import copy
import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from condseg.config import load_config
from condseg.data.synthetic import synthesize
from condseg.data.transforms import geometric_augmentation
from condseg.errors import ConfigError, ModelError
from condseg.evaluation.evaluate import evaluate
from condseg.inference.export import export_onnx
from condseg.inference.predict import predict_files
from condseg.methods.pdcr_uafr.losses import (
    CePdcrLoss,
    affinity,
    class_integrals,
    class_ratios,
    pdcr_loss,
)
from condseg.methods.pdcr_uafr.pdcr import (
    Term,
    chain_field,
    grid_indices,
    grid_shape,
    hierarchical_boxes,
    layer_chain,
    terms_of,
)
from condseg.methods.pdcr_uafr.uafr import UAFR, reweight, uncertainty
from condseg.models.base import ModelOutput, SegmentationModel
from condseg.models.model_file import load_model
from condseg.models.plugins import attach_plugins
from condseg.models.registry import create_model
from condseg.training import train

HOSTS = ("deeplabv3plus", "unet", "condseg")
#: Narrow decoders keep the runs short.
NARROW = {"deeplabv3plus": {"decoder_channels": 32},
          "unet": {"decoder_channels": [32, 16, 16, 8, 8]},
          "condseg": {"width": 32}}
BOTH = {"uafr": {}, "pdcr": {}}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- PDCR: patches, foreground ratios, affinity ------------------------------------------------

def test_sampling_grid_and_hierarchical_patches() -> None:
    assert [grid_shape(n) for n in (128, 64, 32, 8, 7)] == [(8, 16), (8, 8), (4, 8), (2, 4),
                                                             (1, 7)]
    assert grid_indices(16, 4, torch.device("cpu")).tolist() == [2, 6, 10, 14]
    # A 4-wide feature of a 16-pixel image: each index covers 4 pixels, centre pixel 4i + 2.
    start, end = hierarchical_boxes(torch.tensor([0, 3]), 4, 16, (5, 7, 9))
    assert start.tolist() == [[0, -1, -2], [12, 11, 10]]
    assert end.tolist() == [[5, 6, 7], [17, 18, 19]]


def test_foreground_ratios_of_chosen_patches() -> None:
    mask = torch.zeros(1, 1, 10, 10)
    mask[0, 0, :4, :4] = 1  # a 4x4 lesion in the top-left corner
    boxes = torch.tensor([[[0, 0, 5, 5]],    # 16 of 25 pixels
                          [[0, 0, 3, 3]],    # inside the lesion (a 5x5 patch at a corner)
                          [[5, 5, 10, 10]],  # background
                          [[2, 2, 7, 7]]])   # 2x2 = 4 of 25
    phi = class_ratios(class_integrals(mask, 2), boxes)
    assert phi.shape == (1, 4, 1, 2)
    torch.testing.assert_close(phi[0, :, 0, 1], torch.tensor([16 / 25, 1.0, 0.0, 4 / 25]))
    torch.testing.assert_close(phi[0, 0, 0], torch.tensor([9 / 25, 16 / 25]))


def test_affinity_matrix() -> None:
    ratios = torch.tensor([[0.0, 0.5, 1.0]])[..., None]
    phi = torch.stack([1 - ratios, ratios], -1)  # (B=1, N=3, P=1, M=2)
    w = affinity(phi, phi)
    assert w.shape == (1, 1, 3, 3)
    torch.testing.assert_close(w[0, 0], torch.tensor([[1.0, 0.5, 0.0],
                                                      [0.5, 1.0, 0.5],
                                                      [0.0, 0.5, 1.0]]))


# --- PDCR: the loss ------------------------------------------------------------------------------

def _one_patch_term(a, b, ratios_a, ratios_b) -> tuple[Term, torch.Tensor]:
    """A Term of 1x1 patches on a 1-row mask whose pixel values are the foreground ratios."""
    mask = torch.tensor([*ratios_a, *ratios_b], dtype=torch.float32).view(1, 1, 1, -1)
    def boxes(offset, n):
        return torch.tensor([[[0, offset + i, 1, offset + i + 1]] for i in range(n)])
    term = Term("t", torch.tensor([a], dtype=torch.float32), torch.tensor([b], dtype=torch.float32),
                boxes(0, len(ratios_a)), boxes(len(ratios_a), len(ratios_b)))
    return term, mask


def test_single_layer_term_by_hand() -> None:
    # v1 = (1, 0) in foreground, v2 = (0, 1) and v3 = (1, 1) in background:
    # s = [[1, 0, c], [0, 1, c], [c, c, 1]] with c = 1/sqrt(2);
    # w = [[1, 0, 0], [0, 1, 1], [0, 1, 1]].
    vectors = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    term, mask = _one_patch_term(vectors, vectors, [1, 0, 0], [])
    term = term._replace(boxes_b=term.boxes_a)
    c = 1 / math.sqrt(2)
    # Row i: log sum_n exp(s_in (1 - w_in)) - s_ij w_ij, over j.
    row1 = 3 * math.log(math.exp(0) + math.exp(0) + math.exp(c)) - (1 + 0 + 0)
    row2 = 3 * math.log(math.exp(0) + math.exp(0) + math.exp(0)) - (0 + 1 + c)
    row3 = 3 * math.log(math.exp(c) + math.exp(0) + math.exp(0)) - (0 + c + 1)
    expected = (row1 + row2 + row3) / 9
    got = pdcr_loss([term], mask, tau=1.0, position=False)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_cross_layer_term_by_hand() -> None:
    # Layer l: v1 = (1, 0) foreground, v2 = (0, 1) background; layer l': u1 = (1, 0) foreground.
    term, mask = _one_patch_term([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0]], [1, 0], [1])
    # s = [[1], [0]], w = [[1], [0]]: rows log exp(1*0) - 1 = -1 and log exp(0) - 0 = 0.
    assert pdcr_loss([term], mask, tau=1.0, position=False).item() == pytest.approx(-0.5)
    # With tau = 0.5 every exponent doubles: row 1 gives -2.
    assert pdcr_loss([term], mask, tau=0.5, position=False).item() == pytest.approx(-1.0)


def _eq12_loop(a, b, boxes_a, boxes_b, mask, tau: float) -> float:
    """Eq. 12 for one term, pair by pair: the mean over images, i, j and k of
    -log(exp(s_ij w_ij / tau) / sum_n exp(s_in (1 - w_in) / tau)), with positions appended."""
    batch, height, width = mask.shape[0], mask.shape[-2], mask.shape[-1]
    m = mask[:, 0].numpy()

    def phi(image, box):
        y0, x0, y1, x1 = (int(v) for v in box)
        ratio = m[image, y0:y1, x0:x1].sum() / ((y1 - y0) * (x1 - x0))
        return [1 - ratio, ratio]

    def rep(vector, box):
        y0, x0, y1, x1 = (int(v) for v in box)
        pos = [x0 / width, (x1 - 1) / width, y0 / height, (y1 - 1) / height]
        return np.array([*vector.tolist(), *pos])

    def cos(u, v):
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    total, count_ = 0.0, 0
    for image in range(batch):
        for i in range(a.shape[1]):
            for j in range(b.shape[1]):
                for k in range(boxes_a.shape[1]):
                    def pair(n, i=i, k=k, image=image):
                        s = cos(rep(a[image, i], boxes_a[i, k]), rep(b[image, n], boxes_b[n, k]))
                        pa, pb = phi(image, boxes_a[i, k]), phi(image, boxes_b[n, k])
                        w = 1 - sum(abs(x - y) for x, y in zip(pa, pb, strict=True)) / 2
                        return s, w
                    s_ij, w_ij = pair(j)
                    denominator = sum(math.exp(s * (1 - w) / tau)
                                      for s, w in map(pair, range(b.shape[1])))
                    total += -math.log(math.exp(s_ij * w_ij / tau) / denominator)
                    count_ += 1
    return total / count_


def _random_boxes(generator, n: int, size: int) -> torch.Tensor:
    centres = torch.randint(0, size, (n, 1, 2), generator=generator)
    half = torch.tensor([2, 3, 4])[None, :, None]
    return torch.cat([(centres - half).clamp(0, size), (centres + half + 1).clamp(0, size)], -1)


@pytest.mark.parametrize("cross", [False, True])
def test_vectorised_loss_equals_eq12_loop(cross: bool) -> None:
    g = torch.Generator().manual_seed(3)
    size = 16
    mask = (torch.rand(2, 1, size, size, generator=g) > 0.6).float()
    a = torch.randn(2, 5, 6, generator=g)
    boxes_a = _random_boxes(g, 5, size)
    b, boxes_b = ((torch.randn(2, 4, 6, generator=g), _random_boxes(g, 4, size)) if cross
                  else (a, boxes_a))
    term = Term("t", a, b, boxes_a, boxes_b)
    expected = _eq12_loop(a, b, boxes_a, boxes_b, mask, tau=0.7)
    assert pdcr_loss([term], mask, tau=0.7).item() == pytest.approx(expected, rel=1e-5)


def test_ce_pdcr_sums_its_terms_and_needs_them() -> None:
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    logits = torch.randn(2, 1, 16, 16, generator=g)
    terms = [Term(name, v, v, boxes, boxes) for name, v, boxes in (
        ("x", torch.randn(2, 4, 3, generator=g), _random_boxes(g, 4, 16)),
        ("y", torch.randn(2, 6, 5, generator=g), _random_boxes(g, 6, 16)))]
    aux = {f"pdcr/{t.name}/{p}": getattr(t, p) for t in terms
           for p in ("a", "b", "boxes_a", "boxes_b")}
    out = CePdcrLoss(weight=0.01)({"image": ModelOutput(logits, aux)}, mask)
    ce = F.binary_cross_entropy_with_logits(logits, mask)
    pdcr = pdcr_loss(terms, mask)
    torch.testing.assert_close(out["loss"], ce + 0.01 * pdcr)
    assert [t.name for t in terms_of(aux)] == ["x", "y"]
    with pytest.raises(ConfigError, match=r"no PDCR features.*plugins\.pdcr"):
        CePdcrLoss()({"image": ModelOutput(logits)}, mask)


def test_receptive_field_of_resnet18_stages() -> None:
    """Eq. 7 on the main path of ResNet-18 (shortcuts left out): 43 and 99 pixels."""
    model = create_model("unet", encoder="resnet18")
    # Eq. 7: r = 1 + sum (k_z - 1) prod_{t<z} s_t, the dilated 3x3 counting as a 5x5;
    # offset sum p_z prod_{t<z} s_t (Eq. 5).
    assert chain_field([(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 1, 2)]) == (
        2, 1 + 1 + 1 * 2, 1 + 2 * 1 + 2 * 1 + 4 * 2)
    # Index i sees [i S - offset, i S - offset + r), centred on pixel i S: offset = (r - 1) / 2.
    assert chain_field(layer_chain(model, "net.encoder.model.layer1")) == (4, 21, 43)
    assert chain_field(layer_chain(model, "net.encoder.model.layer2")) == (8, 49, 99)
    rf = create_model("unet", encoder="resnet18",
                      plugins={"pdcr": {"layers": ["encoder2"], "cross": [],
                                        "receptive_field": ["encoder2"]}}).train()
    boxes = rf(torch.randn(1, 3, 64, 64)).aux["pdcr/encoder2/boxes_a"]
    assert boxes.shape == (64, 1, 4)  # N = 64 at encoder2, one patch: the receptive field
    # An 8x8 grid on the 16x16 feature: its first row and column are index 1, which sees
    # pixels [4 - 21, 4 - 21 + 43) = [-17, 26), clipped to the image.
    assert boxes[0, 0].tolist() == [0, 0, 26, 26]
    assert boxes[3 * 8 + 3, 0].tolist() == [7, 7, 50, 50]  # index 7: [28 - 21, 28 + 22)
    with pytest.raises(ModelError, match="RF-PDCR applies"):
        create_model("unet", encoder="resnet18",
                     plugins={"pdcr": {"receptive_field": ["decoder1"]}})


# --- UAFR ----------------------------------------------------------------------------------------

def test_uafr_uncertainty_and_reweighting() -> None:
    one_hot = torch.tensor([[0.0, -1.0e4], [-1.0e4, 0.0]]).T.reshape(1, 2, 1, 2)
    uniform = torch.zeros(1, 2, 1, 2)
    assert uncertainty(one_hot).tolist() == [[[[0.0, 0.0]]]]
    torch.testing.assert_close(uncertainty(uniform), torch.ones(1, 1, 1, 2))
    assert uncertainty(torch.zeros(1, 5, 3, 3)).allclose(torch.ones(1, 1, 3, 3))  # any M
    q = torch.randn(1, 4, 1, 2)
    assert torch.equal(reweight(q, one_hot), 2 * q)
    torch.testing.assert_close(reweight(q, uniform), q)

    block = UAFR(4)
    with torch.no_grad():
        block.score[-1].weight.zero_()
        block.score[-1].bias.copy_(torch.tensor([50.0, -50.0]))  # a confident F: U = 0
    assert torch.equal(block(q), 2 * q)
    assert count(UAFR(256)) == 256 * 2 * 9 + 2 * 2 + 2 * 2 + 2
    with pytest.raises(ModelError, match="at least 2 classes"):
        UAFR(4, classes=1)


# --- on the hosts -------------------------------------------------------------------------------

#: Parameters of the narrow hosts on resnet18: host, UAFR, PDCR (its cross-layer projections).
PARAMETERS = {"deeplabv3plus": (11_285_681, 19_942, 6_208),
              "unet": (11_453_961, 19_972, 6_208),
              "condseg": (4_464_178, 9_256, 6_208)}


@pytest.mark.parametrize("name", HOSTS)
def test_forward_shapes_and_parameter_counts(name: str) -> None:
    torch.manual_seed(0)
    host = create_model(name, encoder="resnet18", **NARROW[name])
    model = create_model(name, encoder="resnet18", plugins=["uafr", "pdcr"], **NARROW[name])
    counts = (count(host), count(model.plugins.uafr), count(model.plugins.pdcr))
    print(f"{name}: host {counts[0]:,}, uafr {counts[1]:,}, pdcr {counts[2]:,}")
    assert counts == PARAMETERS[name]
    assert count(model) == sum(counts)
    assert set(model.state_dict()) - set(host.state_dict()) == {
        k for k in model.state_dict() if k.startswith("plugins.")}  # host keys unchanged

    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    assert out.mask.shape == (2, 1, 64, 64)
    names = {t.name for t in terms_of(out.aux)}
    decoders = [s for s in model.plugin_sites() if s.startswith("decoder")]
    assert names == {"encoder2", "encoder3", "encoder4", *decoders, "encoder2~encoder3"}
    cross = next(t for t in terms_of(out.aux) if t.name == "encoder2~encoder3")
    assert cross.a.shape == (2, 64, 32) and cross.b.shape == (2, 32, 32)
    assert cross.boxes_a.shape == (64, 3, 4)
    with torch.no_grad():
        evaluated = model.eval()(x)
    assert not terms_of(evaluated.aux) and set(evaluated.aux) == set(model.map_names)


def test_hooks_follow_a_deep_copy() -> None:
    model = create_model("deeplabv3plus", encoder="resnet18", plugins=["uafr"]).eval()
    twin = copy.deepcopy(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x).mask
        torch.testing.assert_close(twin(x).mask, before)
        for block in twin.plugins.uafr.blocks.values():
            block.score[-1].bias.copy_(torch.tensor([50.0, -50.0]))
            block.score[-1].weight.zero_()
        assert not torch.allclose(twin(x).mask, before)
        torch.testing.assert_close(model(x).mask, before)


def test_bad_plugin_options_are_clear() -> None:
    with pytest.raises(ModelError, match=r"no site 'decoder9'.*its sites: encoder1"):
        create_model("unet", encoder="resnet18", plugins={"uafr": {"layers": ["decoder9"]}})
    with pytest.raises(ModelError, match="bad option for plug-in 'pdcr'"):
        create_model("unet", encoder="resnet18", plugins={"pdcr": {"size": 3}})
    with pytest.raises(ModelError, match="list of names or a mapping"):
        create_model("unet", encoder="resnet18", plugins="uafr")
    with pytest.raises(ModelError, match="declares no plug-in sites"):
        attach_plugins(SegmentationModel(), ["uafr"])


def test_method_recipe_and_affine_augmentation() -> None:
    cfg = load_config("pdcr-uafr")
    stage = cfg.stages["train"]
    assert cfg.model.name == "deeplabv3plus" and cfg.model.options["plugins"] == BOTH
    assert stage.loss.name == "ce-pdcr" and stage.loss.options["weight"] == 0.01
    assert (stage.optimizer.name, stage.optimizer.lr, stage.optimizer.weight_decay) == (
        "adam", 1e-3, 1e-5)
    assert stage.schedule.name == "cosine"
    aug = stage.augmentation
    assert (aug.rotate, aug.scale, aug.shear, aug.shift) == (90, (0.8, 1.2), 20, 0.1)
    baseline = load_config("pdcr-ablation-baseline")
    assert baseline.model.options["plugins"] == {"uafr": False, "pdcr": False}
    assert not hasattr(create_model("deeplabv3plus", encoder="resnet18",
                                    **{"plugins": baseline.model.options["plugins"]}), "plugins")

    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 1
    affine = geometric_augmentation(90, 1.0, 0.0, seed=0, scale=(0.8, 1.2), shear=20, shift=0.1)
    assert type(affine.transforms[0]).__name__ == "Affine"
    out = affine(image=image, mask=mask)["mask"]
    assert set(np.unique(out)) <= {0, 1} and not np.array_equal(out, mask)
    assert type(geometric_augmentation().transforms[0]).__name__ == "Rotate"  # default unchanged
    with pytest.raises(ConfigError, match="scale"):
        load_config("pdcr-uafr", ["stages.train.augmentation.scale=[1.2, 0.8]"])


@pytest.mark.slow
@pytest.mark.parametrize("name", HOSTS)
def test_train_evaluate_predict_export_with_plugins(name: str, tmp_path) -> None:
    data = synthesize(tmp_path / "data", n_train=4, n_val=2, size=64)
    overrides = [f"model.name={name}", "model.options.encoder=resnet18",
                 f"model.options.plugins={BOTH}".replace("'", ""), "model.pretrained=false",
                 "data.size=64", "data.batch_size=2", "data.num_workers=0",
                 "stages.train.max_epochs=1", "stages.train.limit_train_batches=2",
                 "progress_bar=false"]
    overrides += [f"model.options.{key}={value}".replace(" ", "")
                  for key, value in NARROW[name].items()]
    cfg = load_config("pdcr-uafr", overrides)
    result = train(cfg, data, tmp_path / "run")

    model = load_model(result.model_file)
    assert set(model.plugins) == {"uafr", "pdcr"}
    assert not terms_of(model(torch.randn(1, 3, 64, 64)).aux)  # loaded in eval mode
    scores = evaluate(model, data, split="val")
    assert len(scores.rows) == 2 and 0 <= scores.summary["iou"]["mean"] <= 1
    image = tmp_path / "new.png"
    Image.fromarray(np.full((50, 70, 3), 120, np.uint8)).save(image)
    report = predict_files(model, [image], tmp_path / "pred")
    assert not report.failed and report.written

    # The exported graph holds UAFR but nothing of PDCR: it equals the export of the same
    # weights without the pdcr plug-in, node for node and weight for weight.
    full = onnx.load(export_onnx(model, tmp_path / "full.onnx").path)
    options = {**model.arch["options"], "plugins": {"uafr": {}}}
    uafr_only = create_model(name, **options)
    uafr_only.load_state_dict({k: v for k, v in model.state_dict().items()
                               if not k.startswith("plugins.pdcr.")})
    uafr_only.meta = model.meta
    reference = onnx.load(export_onnx(uafr_only, tmp_path / "uafr.onnx", verify=False).path)
    assert [n.op_type for n in full.graph.node] == [n.op_type for n in reference.graph.node]
    assert sorted(np.prod(t.dims) for t in full.graph.initializer) == sorted(
        np.prod(t.dims) for t in reference.graph.initializer)
    assert not any("pdcr" in n.name for n in full.graph.node)
    assert not any("pdcr" in t.name for t in full.graph.initializer)
    assert [o.name for o in full.graph.output] == ["mask", *model.map_names]
    host = create_model(name, **{**model.arch["options"], "plugins": []})
    host.load_state_dict({k: v for k, v in model.state_dict().items()
                          if not k.startswith("plugins.")})
    host.meta = model.meta
    plain = onnx.load(export_onnx(host, tmp_path / "host.onnx", verify=False).path)
    assert len(full.graph.node) > len(plain.graph.node)  # UAFR is part of inference
