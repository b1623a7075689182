"""Models of K classes (issue 24, point 2): every registered model builds with ``num_classes``
(K logit maps) or refuses in one line naming itself; K is checked once by ``create_model``; a
model file carries the class names and rebuilds the model; an ensemble takes members of one K
and averages their softmax probabilities; a binary model and its file are as before classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from condseg.data.labels import IGNORE_ID
from condseg.errors import EnsembleError, ModelError, ModelFileError
from condseg.inference.tta import TTA
from condseg.models.base import (
    MAX_CLASSES,
    SegmentationModel,
    check_num_classes,
    class_names,
    mask_channels,
    refuse_classes,
)
from condseg.models.ensemble import build_ensemble, mean_probability_logits, save_ensemble
from condseg.models.model_file import classes_problem, load_model, read_header, save_model
from condseg.models.registry import MODELS, create_model, list_models, register_model

SIZE = 64
#: The smallest build of each packaged model (every encoder option a ResNet-18 or PVT-v2-b0).
TINY = {"chnet": {"encoder": "resnet18"}, "condseg": {"encoder": "resnet18", "width": 16},
        "condseg-net0": {"encoder": "resnet18"}, "condseg-pvt": {"encoder": "pvt_v2_b0",
                                                                 "width": 16},
        "deeplabv3plus": {"encoder": "resnet18"}, "m2snet": {"encoder": "resnet18"},
        "msnet": {"encoder": "resnet18"}, "unet": {"encoder": "resnet18"},
        "unetplusplus": {"encoder": "resnet18"}}
#: The models binary by design (issue 24: SID decouples foreground from background).
BINARY_ONLY = {"condseg": "ConDSeg", "condseg-pvt": "ConDSeg",
               "condseg-net0": "Net_0 (ConDSeg's stage 1)"}
NAMES = ["background", "rnfl", "gcipl"]
#: The header keys of a binary model file, as before classes existed.
BINARY_HEADER = {"format_version", "arch", "mean", "std", "input_size", "version", "metrics",
                 "config"}


def packaged_models() -> list[str]:
    """The registered models condseg ships (other test modules register their own)."""
    def module(name: str) -> str:
        item = MODELS.get(name)
        return getattr(item, "func", item).__module__  # smp's builders are partials

    return [name for name in list_models() if module(name).startswith("condseg.")]


def tiny(name: str, k: int) -> dict:
    """Options building ``name`` small with ``k`` classes (an ensemble: of one U-Net)."""
    options = dict(TINY.get(name, {}))
    if name == "ensemble":
        member = {"encoder": "resnet18", **({"num_classes": k} if k > 1 else {})}
        options["members"] = [{"name": "unet", "options": member}]
    return {**options, **({"num_classes": k} if k > 1 else {})}


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("name", packaged_models())
def test_every_model_builds_with_k_classes_or_refuses_naming_itself(name: str, k: int) -> None:
    if k > 1 and name in BINARY_ONLY:
        with pytest.raises(ModelError) as error:
            create_model(name, **tiny(name, k))
        message = str(error.value)
        assert message.startswith(f"{BINARY_ONLY[name]} is binary by design (SID decouples "
                                  "foreground from background): it takes num_classes=1, not 3")
        assert "\n" not in message
        return
    model = create_model(name, **tiny(name, k)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, SIZE, SIZE))
    assert out.mask.shape == (2, mask_channels(k), SIZE, SIZE)
    assert all(out.aux[key].shape == (2, 1, SIZE, SIZE) for key in model.map_names)
    assert model.num_classes == k
    assert ("num_classes" in model.arch["options"]) == (k > 1)
    assert class_names(model) == (None if k == 1 else ("background", "class1", "class2"))
    assert TTA(model).num_classes == k  # a wrapper is its inner model's K


def test_the_binary_only_models_are_exactly_the_condseg_family() -> None:
    """Guards the table above: a model that could take K but refuses fails here."""
    assert set(TINY) | {"ensemble"} == set(packaged_models())


@pytest.mark.parametrize("value", [0, -1, 256, True, 2.0, "3", None])
def test_num_classes_is_checked_once_by_create_model(value: object) -> None:
    with pytest.raises(ModelError, match=r"model 'unet': num_classes must be an int from 1 "
                                         r"\(binary\) to 255") as error:
        create_model("unet", encoder="resnet18", num_classes=value)
    assert "\n" not in str(error.value)
    assert MAX_CLASSES == IGNORE_ID  # class ids 0..254: the last id marks ignored pixels
    assert check_num_classes(255) == 255 and mask_channels(2) == 2 and mask_channels(1) == 1


def test_refuse_classes_takes_binary_and_names_the_reason() -> None:
    refuse_classes("X", 1, "why")
    with pytest.raises(ModelError, match=r"^X is binary by design \(why\): it takes "
                                         r"num_classes=1, not 4; use a method"):
        refuse_classes("X", 4, "why")
    with pytest.raises(ModelError, match="num_classes must be an int"):
        refuse_classes("X", 0, "why")


def test_binary_given_explicitly_builds_the_binary_model() -> None:
    torch.manual_seed(0)
    plain = create_model("msnet", encoder="resnet18")
    torch.manual_seed(0)
    explicit = create_model("msnet", encoder="resnet18", num_classes=1)
    assert explicit.arch == plain.arch == {"name": "msnet", "options": {"encoder": "resnet18"}}
    a, b = plain.state_dict(), explicit.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_builder_without_num_classes_is_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS.entries()))

    def builder(encoder: str = "resnet18") -> SegmentationModel:
        return create_model("unet", encoder=encoder)

    register_model("binary-only-builder", builder)
    assert create_model("binary-only-builder").num_classes == 1
    with pytest.raises(ModelError, match=r"model 'binary-only-builder' takes no num_classes "
                                         r"option .* not 3 classes"):
        create_model("binary-only-builder", num_classes=3)


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A U-Net of 3 classes saved with their names."""
    torch.manual_seed(0)
    net = create_model("unet", encoder="resnet18", num_classes=3)
    path = tmp_path_factory.mktemp("classes") / "three.safetensors"
    return save_model(path, net, mean=None, std=None, input_size=SIZE, classes=NAMES)


def test_a_model_file_of_classes_round_trips(three: Path, tmp_path: Path) -> None:
    header = read_header(three)
    assert header["classes"] == NAMES and header["arch"]["options"]["num_classes"] == 3
    model = load_model(three)
    assert model.num_classes == 3 and model.meta["classes"] == NAMES
    assert class_names(model) == tuple(NAMES)
    with torch.no_grad():
        assert model(torch.rand(1, 3, SIZE, SIZE)).mask.shape == (1, 3, SIZE, SIZE)
    again = save_model(tmp_path / "again.safetensors", model, mean=None, std=None,
                       input_size=SIZE)  # the names come with the model
    assert read_header(again)["classes"] == NAMES


@pytest.mark.parametrize(("classes", "message"), [
    (["background", "rnfl"], r"classes must list the names of the model's 3 classes"),
    (["background", "rnfl", "rnfl"], "class names must be distinct"),
    (["background", "", "gcipl"], "class name '' must be non-empty"),
    (["background", " rnfl", "gcipl"], "without surrounding spaces"),
    (["background", "a,b", "gcipl"], r"without surrounding spaces, ',', '=' or '/'"),
    (["background", "a\nb", "gcipl"], "must be non-empty and printable"),
    (["background", 3, "gcipl"], "classes must list the names"),
])
def test_saving_refuses_bad_class_names_and_writes_nothing(
        tmp_path: Path, classes: list, message: str) -> None:
    net = create_model("unet", encoder="resnet18", num_classes=3)
    path = tmp_path / "bad.safetensors"
    with pytest.raises(ModelFileError, match=message) as error:
        save_model(path, net, mean=None, std=None, input_size=SIZE, classes=classes)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_a_binary_model_takes_no_class_names(tmp_path: Path) -> None:
    net = create_model("unet", encoder="resnet18")
    with pytest.raises(ModelFileError, match=r"a binary model .* has no class names"):
        save_model(tmp_path / "b.safetensors", net, mean=None, std=None, input_size=SIZE,
                   classes=["background", "polyp"])
    assert classes_problem(None, 1) is None and classes_problem(NAMES, 3) is None


def _forged(source: Path, target: Path, **changes: object) -> Path:
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    header = {**read_header(source), **changes}
    save_file(tensors, str(target), metadata={"condseg": json.dumps(header)})
    return target


ARCH3 = {"name": "unet", "options": {"encoder": "resnet18", "num_classes": 3}}
FORGED = {
    "no-names": ({"classes": None}, "classes must list the names of the model's 3 classes"),
    "names-of-binary": ({"arch": {"name": "unet", "options": {"encoder": "resnet18"}}},
                        r"a binary model \(num_classes 1\) has no class names"),
    "too-few": ({"classes": NAMES[:2]}, "classes must list the names of the model's 3"),
    "a-string": ({"classes": "background,rnfl,gcipl"}, "classes must list the names"),
    "doubled": ({"classes": ["background", "x", "x"]}, "class names must be distinct"),
    "long-list": ({"classes": ["c"] * 10_000}, r"classes must list .*, \.\.\.\]$"),
    "k-text": ({"arch": {**ARCH3, "options": {**ARCH3["options"], "num_classes": "3"}}},
               "arch.options.num_classes must be an int from 1 to 255, got '3'"),
    "k-zero": ({"arch": {**ARCH3, "options": {**ARCH3["options"], "num_classes": 0}}},
               "arch.options.num_classes must be an int from 1 to 255"),
    "k-huge": ({"arch": {**ARCH3, "options": {**ARCH3["options"], "num_classes": 10**9}}},
               "arch.options.num_classes must be an int from 1 to 255"),
    "k-other": ({"arch": {**ARCH3, "options": {**ARCH3["options"], "num_classes": 4}},
                 "classes": [*NAMES, "choroid"]},
                r"do not match architecture 'unet' .*of another shape"),
}


@pytest.mark.parametrize("case", FORGED)
def test_a_forged_classes_header_is_one_error_line(three: Path, tmp_path: Path,
                                                   case: str) -> None:
    changes, message = FORGED[case]
    path = _forged(three, tmp_path / f"{case}.safetensors", **changes)
    with pytest.raises(ModelFileError, match=message) as error:
        load_model(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert len(str(error.value)) < 600


def test_a_binary_model_file_is_as_before_classes(tmp_path: Path) -> None:
    """No class field in the header, no num_classes in the architecture, the same bytes for
    the same weights."""
    torch.manual_seed(0)
    net = create_model("chnet", encoder="resnet18")
    paths = [save_model(tmp_path / f"{i}.safetensors", net, mean=None, std=None,
                        input_size=SIZE) for i in range(2)]
    header = read_header(paths[0])
    assert set(header) == BINARY_HEADER
    assert header["arch"] == {"name": "chnet", "options": {"encoder": "resnet18"}}
    assert paths[0].read_bytes() == paths[1].read_bytes()
    loaded = load_model(paths[0])
    assert loaded.num_classes == 1 and "classes" not in loaded.meta and class_names(loaded) is None


def _member(tmp_path: Path, name: str, k: int, classes: list[str] | None = None) -> Path:
    net = create_model("chnet", encoder="resnet18", **({"num_classes": k} if k > 1 else {}))
    return save_model(tmp_path / name, net, mean=None, std=None, input_size=SIZE,
                      classes=classes)


def test_an_ensemble_of_classes_averages_softmax_probabilities(tmp_path: Path) -> None:
    torch.manual_seed(0)
    files = [_member(tmp_path, f"{i}.safetensors", 3, NAMES) for i in range(2)]
    ensemble = build_ensemble(files)
    assert ensemble.num_classes == 3 and class_names(ensemble) == tuple(NAMES)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        mean = torch.stack([m(x).mask.softmax(1) for m in ensemble.members]).mean(0)
        torch.testing.assert_close(ensemble(x).mask.softmax(1), mean)
    path = save_ensemble(tmp_path / "ensemble.safetensors", files)
    header = read_header(path)
    assert header["classes"] == NAMES and header["arch"]["options"]["num_classes"] == 3
    assert load_model(path).num_classes == 3


def test_mean_probability_logits_of_classes_is_exact_and_finite() -> None:
    logits = [torch.tensor([[[[1e4]], [[0.0]], [[-1e4]]]]), torch.tensor([[[[0.0]], [[0.0]],
                                                                          [[0.0]]]])]
    merged = mean_probability_logits(logits)
    assert torch.isfinite(merged).all()
    expected = (logits[0].softmax(1) + logits[1].softmax(1)) / 2
    torch.testing.assert_close(merged.softmax(1), expected)
    torch.testing.assert_close(merged.exp(), expected)  # the log of the mean probabilities


@pytest.mark.parametrize("case", ["binary-and-three", "other-names"])
def test_ensemble_members_of_other_classes_are_refused(tmp_path: Path, case: str) -> None:
    first = _member(tmp_path, "a.safetensors", 3, NAMES)
    second = (_member(tmp_path, "b.safetensors", 1) if case == "binary-and-three"
              else _member(tmp_path, "b.safetensors", 3, ["background", "x", "y"]))
    with pytest.raises(EnsembleError, match="ensemble members must share their classes") as e:
        build_ensemble([first, second])
    message = str(e.value)
    assert str(first) in message and str(second) in message and "\n" not in message
    assert "3 classes (background, rnfl, gcipl)" in message


def test_an_ensemble_refuses_members_of_another_k() -> None:
    members = [{"name": "chnet", "options": {"encoder": "resnet18"}}]
    with pytest.raises(EnsembleError, match=r"members must all have num_classes=3 \(the "
                                            r"ensemble's\); member 0 \(chnet\) has 1"):
        create_model("ensemble", members=members, num_classes=3)
