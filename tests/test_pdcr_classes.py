"""PDCR and UAFR with K classes (issue 24) and in 3-D (issue 25): the binary 2-D path unchanged
(outputs and losses recorded from the code before the change), φ over M classes against Eq. 3–4
pixel by pixel, a K-class model's loss and gradients, and the 3-D plug-ins on a tiny network."""

from __future__ import annotations

import itertools
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from condseg.data.labels import IGNORE_ID
from condseg.methods.pdcr_uafr.losses import (
    CePdcrLoss,
    affinity,
    class_integrals,
    class_ratios,
    cross_entropy,
    pdcr_loss,
)
from condseg.methods.pdcr_uafr.pdcr import (
    PatchDragsaw,
    grid_shape,
    receptive_field_of,
    terms_of,
)
from condseg.methods.pdcr_uafr.uafr import UAFR
from condseg.models.base import SegmentationModel
from condseg.models.plugins import attach_plugins
from condseg.models.registry import create_model

#: Recorded by ``binary_case`` on main at bcf1e45, before PDCR/UAFR took classes and 3-D.
REFERENCE = Path(__file__).parent / "data" / "pdcr_binary_reference.safetensors"
CASES = {
    "h": {"uafr": {}, "pdcr": {}},
    "rf": {"uafr": {"layers": ["encoder2", "decoder1"]},
           "pdcr": {"layers": ["encoder2", "encoder3"], "receptive_field": ["encoder2"],
                    "samples": {"encoder2": 32, "encoder3": 12}, "patches": [3, 5]}},
}


def fixed(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A weight that depends only on its name and shape (not on the order modules are built)."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    if name.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=g)
    fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
    return (torch.rand(shape, generator=g) * 2 - 1) * (3 / fan_in) ** 0.5


def binary_case(case: str) -> dict[str, torch.Tensor]:
    """The outputs (eval and train) and the ce-pdcr loss of a binary DeepLabV3+ with plug-ins."""
    model = create_model("deeplabv3plus", encoder="resnet18", decoder_channels=32,
                         plugins=CASES[case])
    model.load_state_dict({k: fixed(k, tuple(v.shape)) for k, v in model.state_dict().items()})
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 64, 64, generator=g)
    target = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    target = F.interpolate(target, size=(64, 64))  # blobs of 8x8 pixels
    with torch.no_grad():
        evaluated = model.eval()(x).mask
    torch.manual_seed(0)  # ASPP's dropout
    out = model.train()(x)
    loss = CePdcrLoss()({"image": out}, target)
    return {"eval/mask": evaluated, "train/mask": out.mask,
            **{f"train/{k}": v for k, v in out.aux.items()
               if "~" in k or not k.endswith(("/b", "/boxes_b"))},
            **{f"loss/{k}": v.reshape(1) for k, v in loss.items()}}


@pytest.mark.parametrize("case", CASES)
def test_binary_outputs_and_loss_are_unchanged(case: str) -> None:
    """H-PDCR (defaults) and RF-PDCR on fixed weights: every output, box and loss bit for bit."""
    reference = {k[len(case) + 1:]: v for k, v in load_file(REFERENCE).items()
                 if k.startswith(case + "/")}
    got = binary_case(case)
    assert set(got) == set(reference)
    for key, value in got.items():
        assert torch.equal(value.detach(), reference[key]), key


# --- φ over M classes (Eq. 3–4) ------------------------------------------------------------------

def _phi_loop(ids: torch.Tensor, boxes: torch.Tensor, classes: int) -> torch.Tensor:
    """Eq. 4 patch by patch: the pixels of each class over the patch's labelled pixels (a patch
    with none counts as background)."""
    dims = boxes.shape[-1] // 2
    out = torch.zeros(ids.shape[0], boxes.shape[0], boxes.shape[1], classes)
    for image, i, k in itertools.product(*map(range, out.shape[:3])):
        box = boxes[i, k].tolist()
        patch = ids[image, 0][tuple(slice(box[a], box[dims + a]) for a in range(dims))]
        labelled = (patch != IGNORE_ID).sum().item()
        for m in range(classes):
            out[image, i, k, m] = (patch == m).sum().item() / labelled if labelled else m == 0
    return out


def _boxes(g: torch.Generator, n: int, size: tuple[int, ...], sides=(1, 3, 5)) -> torch.Tensor:
    """(n, P, 2·d) patches of ``sides`` around random centres, clipped to the image."""
    top = torch.tensor(size)
    centres = (torch.rand(n, 1, len(size), generator=g) * top).long()
    half = torch.tensor([s // 2 for s in sides])[None, :, None]
    return torch.cat([(centres - half).clamp(min=0), torch.minimum(centres + half + 1, top)], -1)


@pytest.mark.parametrize(("size", "classes"), [((12, 10), 4), ((6, 7, 5), 3), ((9, 9), 2)])
def test_class_ratios_and_affinity_follow_eq3_eq4(size, classes) -> None:
    g = torch.Generator().manual_seed(sum(size) + classes)
    ids = torch.randint(0, classes, (2, 1, *size), generator=g)
    ids[torch.rand(ids.shape, generator=g) < 0.15] = IGNORE_ID
    ids[0, 0][(slice(0, 3),) * len(size)] = IGNORE_ID  # a corner with no labelled pixel
    boxes = _boxes(g, 7, size)
    boxes[0, 0] = torch.tensor([0] * len(size) + [2] * len(size))  # inside that corner
    phi = class_ratios(class_integrals(ids, classes), boxes)
    expected = _phi_loop(ids, boxes, classes)
    assert phi.shape == (2, 7, 3, classes)
    torch.testing.assert_close(phi, expected)
    assert phi[0, 0, 0].tolist() == [1.0] + [0.0] * (classes - 1)
    # Eq. 3: w_ij(k) = 1 − (1/M) Σ_m |φ_i^m(k) − φ_j^m(k)|, pair by pair.
    w = affinity(phi, phi)
    for image, k, i, j in itertools.product(range(2), range(3), range(7), range(7)):
        diff = sum(abs(expected[image, i, k, m] - expected[image, j, k, m])
                   for m in range(classes))
        assert w[image, k, i, j].item() == pytest.approx(1 - diff.item() / classes, abs=1e-6)


def test_ignored_pixels_are_left_out_of_the_ratios() -> None:
    ids = torch.tensor([[1, 1], [2, IGNORE_ID]]).view(1, 1, 2, 2)
    phi = class_ratios(class_integrals(ids, 3), torch.tensor([[[0, 0, 2, 2]]]))
    torch.testing.assert_close(phi[0, 0, 0], torch.tensor([0.0, 2 / 3, 1 / 3]))
    # The same pixel read as background instead changes φ: ignoring is not background.
    ids[0, 0, 1, 1] = 0
    phi = class_ratios(class_integrals(ids, 3), torch.tensor([[[0, 0, 2, 2]]]))
    torch.testing.assert_close(phi[0, 0, 0], torch.tensor([0.25, 0.5, 0.25]))


def test_targets_as_masks_float_ids_or_int_ids_give_the_same_loss() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 6, 5, generator=g)
    boxes = _boxes(g, 6, (16, 16), (5, 7, 9))
    terms = [terms_of({"pdcr/t/a": a, "pdcr/t/b": a, "pdcr/t/boxes_a": boxes,
                       "pdcr/t/boxes_b": boxes})[0]]
    mask = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    assert torch.equal(pdcr_loss(terms, mask), pdcr_loss(terms, mask.long(), classes=2))
    ids = torch.randint(0, 4, (2, 1, 16, 16), generator=g)
    ids[:, :, :3] = 9  # an ignore value of the caller's (as nnU-Net's ignore label)
    loss = pdcr_loss(terms, ids, classes=4, ignore=9)
    assert torch.equal(loss, pdcr_loss(terms, ids.float(), classes=4, ignore=9))
    assert not torch.equal(loss, pdcr_loss(terms, ids.clamp(max=3), classes=4, ignore=9))
    binary = (ids == 1).long().masked_fill(ids == 9, 9)
    assert torch.equal(pdcr_loss(terms, binary, ignore=9),
                       pdcr_loss(terms, binary.float(), ignore=9))


# --- a K-class DeepLabV3+ ------------------------------------------------------------------------

def deeplab_with_classes(classes: int) -> SegmentationModel:
    """DeepLabV3+ with ``classes`` logit maps (smp's segmentation head with K outputs, as the
    model contract builds it) and both plug-ins attached to it."""
    model = create_model("deeplabv3plus", encoder="resnet18", decoder_channels=32)
    head = model.net.segmentation_head[0]
    model.net.segmentation_head[0] = nn.Conv2d(head.in_channels, classes, head.kernel_size,
                                               padding=head.padding)
    model.num_classes = classes
    attach_plugins(model, {"uafr": {}, "pdcr": {}})
    return model


def _grads(module: nn.Module) -> list[float]:
    return [p.grad.abs().sum().item() if p.grad is not None else 0.0 for p in module.parameters()]


def test_k_class_deeplab_forward_loss_and_gradients() -> None:
    torch.manual_seed(0)
    model = deeplab_with_classes(3).train()
    assert all(block.score[-1].out_channels == 3 for block in model.plugins.uafr.blocks.values())
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 64, 64, generator=g)
    target = torch.randint(0, 3, (2, 1, 8, 8), generator=g)
    target = F.interpolate(target.float(), size=(64, 64)).long()
    target[:, :, :4] = IGNORE_ID
    out = model(x)
    assert out.mask.shape == (2, 3, 64, 64)
    assert {t.name for t in terms_of(out.aux)} == {"encoder2", "encoder3", "encoder4", "decoder1",
                                                   "decoder2", "encoder2~encoder3"}
    loss = CePdcrLoss()({"image": out}, target)
    assert all(torch.isfinite(v) for v in loss.values())
    torch.testing.assert_close(loss["pdcr"], pdcr_loss(terms_of(out.aux), target, classes=3))
    loss["loss"].backward()
    assert all(g > 0 for g in _grads(model.plugins.pdcr))  # the cross-layer projections
    assert all(g > 0 for g in _grads(model.plugins.uafr))
    with torch.no_grad():
        evaluated = model.eval()(x)
    assert evaluated.mask.shape == (2, 3, 64, 64) and not terms_of(evaluated.aux)


def test_k_class_cross_entropy_leaves_ignored_pixels_out() -> None:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (2, 1, 5, 6), generator=g)
    torch.testing.assert_close(cross_entropy(logits, target),
                               F.cross_entropy(logits, target[:, 0]))
    target[0, 0, :2] = IGNORE_ID  # 12 of image 0's 30 pixels
    per_pixel = F.cross_entropy(logits, target[:, 0].clamp(max=3), reduction="none")
    expected = (per_pixel[0, 2:].mean() + per_pixel[1].mean()) / 2
    torch.testing.assert_close(cross_entropy(logits, target), expected)
    with pytest.raises(ValueError, match="must agree"):
        cross_entropy(logits, target[:, :, :4])


# --- 3-D -----------------------------------------------------------------------------------------

class Tiny3d(nn.Module):
    """A two-stage 3-D encoder-decoder with UAFR after each stage and PDCR on all of them, as an
    nnU-Net trainer variant would wire the plug-ins; the second stage strides (1, 2, 2)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv3d(8, 16, 3, stride=(1, 2, 2), padding=1), nn.ReLU()))
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=(1, 2, 2)),
                                     nn.Conv3d(16, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv3d(8, classes, 1)
        self.uafr = nn.ModuleDict({"enc1": UAFR(8, classes, dims=3),
                                   "enc2": UAFR(16, classes, dims=3),
                                   "dec1": UAFR(8, classes, dims=3)})
        self.pdcr = PatchDragsaw({"enc1": 8, "enc2": 16, "dec1": 8}, ["enc1", "enc2", "dec1"],
                                 cross=[("enc1", "enc2")], samples={"enc1": 8, "enc2": 4},
                                 dims=3)
        self.pdcr.fields["enc2"] = receptive_field_of(self, "encoder.1", dims=3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = {"enc1": self.uafr["enc1"](self.encoder[0](x))}
        features["enc2"] = self.uafr["enc2"](self.encoder[1](features["enc1"]))
        features["dec1"] = self.uafr["dec1"](self.decoder(features["enc2"]))
        return self.head(features["dec1"]), features


def test_grids_and_cubes_in_3d() -> None:
    assert [grid_shape(n, 3) for n in (128, 64, 32, 8, 7)] == [
        (4, 4, 8), (4, 4, 4), (2, 4, 4), (2, 2, 2), (1, 1, 7)]
    assert [grid_shape(n) for n in (128, 64, 32, 8, 7)] == [(8, 16), (8, 8), (4, 8), (2, 4),
                                                             (1, 7)]
    model = Tiny3d(3)
    # Two 3x3x3 convolutions, the second strided (1, 2, 2): side 5, offset 2; jump 1, 2, 2.
    assert model.pdcr.fields["enc2"] == ((1, 2, 5), (2, 2, 5), (2, 2, 5))
    feature = torch.arange(4 * 4 * 4.0).view(1, 1, 4, 4, 4)
    sampled = model.pdcr.sample("enc1", feature)  # N = 8: a 2x2x2 grid at indices 1 and 3
    assert sampled.grid.flatten().tolist() == [
        feature[0, 0, z, y, x].item() for z in (1, 3) for y in (1, 3) for x in (1, 3)]
    boxes = model.pdcr.boxes("enc1", (4, 4, 4), (8, 8, 8), False, torch.device("cpu"))
    assert boxes.shape == (8, 3, 6)
    # Index 1 of a 4-wide feature over 8 voxels: centre voxel 3; cubes of 5, 7, 9 clipped.
    assert boxes[0].tolist() == [[1, 1, 1, 6, 6, 6], [0, 0, 0, 7, 7, 7], [0, 0, 0, 8, 8, 8]]
    rf = model.pdcr.boxes("enc2", (8, 4, 4), (8, 8, 8), True, torch.device("cpu"))
    assert rf.shape == (4, 1, 6)
    # N = 4 is a 1x2x2 grid: z index 4 sees [4 - 2, 4 - 2 + 5); y, x index 1: [2 - 2, 2 - 2 + 5).
    assert rf[0, 0].tolist() == [2, 0, 0, 7, 5, 5]


def test_3d_forward_loss_and_gradients() -> None:
    torch.manual_seed(0)
    model = Tiny3d(3).train()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 8, 8, 8, generator=g)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8), generator=g)
    target[:, :, :2] = IGNORE_ID
    # The same vectors by forward hooks on the sites (here the UAFR blocks' outputs).
    model.pdcr.hook(model, {name: f"uafr.{name}" for name in ("enc1", "enc2", "dec1")})
    logits, features = model(x)
    assert logits.shape == (2, 3, 8, 8, 8)
    hooked = model.pdcr.captured_terms(x.shape[2:])
    assert not model.pdcr.captured and model.pdcr.captured_terms(x.shape[2:]) == []
    terms = model.pdcr.terms(features, x.shape[2:])
    assert [t.name for t in hooked] == [t.name for t in terms]
    assert all(torch.equal(u, v) for h, t in zip(hooked, terms, strict=True)
               for u, v in zip(h[1:], t[1:], strict=True))
    assert [t.name for t in terms] == ["enc1", "enc2", "dec1", "enc1~enc2"]
    assert terms[3].a.shape == (2, 8, 32) and terms[3].boxes_b.shape == (4, 3, 6)
    assert terms[1].boxes_a.shape == (4, 1, 6)  # RF-PDCR: one patch, the receptive field
    pdcr = pdcr_loss(terms, target, classes=3)
    loss = cross_entropy(logits, target) + 0.01 * pdcr
    assert torch.isfinite(pdcr) and pdcr != 0
    loss.backward()
    assert all(g > 0 for g in _grads(model.pdcr))
    assert all(g > 0 for g in _grads(model.uafr))
    with torch.no_grad():
        model.eval()(x)
    assert model.pdcr.captured_terms(x.shape[2:]) == []  # nothing sampled outside training
