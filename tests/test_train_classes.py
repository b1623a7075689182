"""Training on K classes (issue 24, points 3 and training): class-id masks from the dataset,
the K-class forms of the losses, K from labels.json into the run, per-class validation Dice in
the run header and the epoch lines, and the binary-by-design refusal before anything is
written."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from condseg.cli import app
from condseg.config import load_config
from condseg.data.dataset import SegmentationDataset
from condseg.data.labels import IGNORE_ID, read_class_mask, read_labels
from condseg.data.masks import read_mask
from condseg.data.split_files import read_split
from condseg.data.synthetic import synthesize
from condseg.data.transforms import geometric_augmentation, resize_mask
from condseg.errors import DataError, LossError, TrainingError
from condseg.evaluation.metrics import class_metric_names
from condseg.losses.base import LOSSES, create_loss
from condseg.losses.mask import mask_loss, multiclass_parts
from condseg.losses.structure import (
    StructureLoss,
    lossnet_maps,
    multiclass_structure_parts,
    structure_parts,
)
from condseg.models.base import ModelOutput
from condseg.models.model_file import read_header
from condseg.training.classes import with_dataset_classes
from condseg.training.cv import cross_validate
from condseg.training.hooks import MultiScale
from condseg.training.module import VAL_SCORES, class_metrics, class_sums
from condseg.training.run import train

runner = CliRunner()
K = 4  # the layers task: background, rnfl, gcipl, choroid


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``condseg data synth --task layers`` output: 4 + 2 scans of 48 px."""
    root = tmp_path_factory.mktemp("layers") / "d"
    result = runner.invoke(app, ["data", "synth", str(root), "--task", "layers", "--train",
                                 "4", "--val", "2", "--size", "48"])
    assert result.exit_code == 0, result.output
    return root


def _declare(root: Path, data: dict) -> None:
    (root / "labels.json").write_text(json.dumps(data))


def _logits_and_ids(seed: int = 0, b: int = 3, k: int = K, size: int = 12):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, size, size, generator=gen) * 2
    ids = torch.randint(0, k, (b, 1, size, size), generator=gen)
    ids[:, :, :3, :3] = IGNORE_ID
    return logits, ids


# --- data -----------------------------------------------------------------------------------


def test_dataset_gives_class_ids_resized_by_nearest(layers: Path) -> None:
    labels = read_labels(layers)
    dataset = SegmentationDataset(layers, "train", size=32, mean=None, std=None)
    assert dataset.labels == labels
    for i in range(len(dataset)):
        mask = dataset[i]["mask"]
        assert mask.dtype == torch.int64 and mask.shape == (1, 32, 32)
        ids = torch.from_numpy(read_class_mask(dataset.pairs[i][1], labels).astype(np.int64))
        # torch's nearest-exact is the oracle: no id averaged into another
        expected = F.interpolate(ids[None, None].float(), size=(32, 32), mode="nearest-exact")
        assert torch.equal(mask, expected[0].long())
        assert set(mask.unique().tolist()) <= set(range(K))


def test_ignored_pixels_and_augmentation_keep_ids(layers: Path, tmp_path: Path) -> None:
    root = tmp_path / "ignore"
    synthesize(root, n_train=2, n_val=1, size=32, task="layers")
    mask_path = root / "masks" / "synth_0000.png"
    values = np.asarray(Image.open(mask_path)).copy()
    values[:8, :8] = 9
    Image.fromarray(values).save(mask_path)
    _declare(root, {"labels": {"background": 0, "rnfl": 1, "gcipl": 2, "choroid": 3},
                    "ignore": 9})
    augment = geometric_augmentation(rotate=30, p_rotate=1.0, p_flip=0.5, seed=1)
    dataset = SegmentationDataset(root, ["synth_0000"], size=16, augment=augment, mean=None,
                                  std=None)
    plain = SegmentationDataset(root, ["synth_0000"], size=16, mean=None, std=None)
    assert (plain[0]["mask"][0, :4, :4] == IGNORE_ID).all()
    assert (plain[0]["mask"][0, 4:, 4:] != IGNORE_ID).all()
    for _ in range(5):  # rotated by nearest: ids stay ids (the uncovered corners background)
        assert set(dataset[0]["mask"].unique().tolist()) <= {0, 1, 2, 3, IGNORE_ID}


def test_binary_datasets_unchanged(tmp_path: Path) -> None:
    root = synthesize(tmp_path / "binary", n_train=2, n_val=1, size=40)
    for declared in (False, True):  # one foreground class declared: binary too
        if declared:
            _declare(root, {"labels": {"background": 0, "polyp": 255}})
        item = SegmentationDataset(root, "train", size=24, mean=None, std=None)[0]
        expected = resize_mask(read_mask(root / "masks" / "synth_0000.png"), 24)
        assert item["mask"].dtype == torch.float32
        assert torch.equal(item["mask"], torch.from_numpy(expected.astype(np.float32))[None])


def test_multiscale_resizes_class_ids_by_nearest() -> None:
    ids = torch.randint(0, K, (2, 1, 32, 32))
    ids[:, :, :4] = IGNORE_ID
    batch = MultiScale(sizes=[20])({"image": torch.rand(2, 3, 32, 32), "mask": ids})
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (2, 1, 20, 20)
    assert set(batch["mask"].unique().tolist()) <= {*range(K), IGNORE_ID}


# --- losses ---------------------------------------------------------------------------------


def test_mask_loss_is_cross_entropy_plus_foreground_dice() -> None:
    logits, ids = _logits_and_ids()
    kept = (ids != IGNORE_ID)[:, 0]
    log_p = logits.log_softmax(1)
    ce = -log_p.gather(1, ids.clamp(max=K - 1))[:, 0][kept].mean()
    prob = log_p.exp()
    dice = []
    for c in range(1, K):  # smp: one Dice per class over the batch's kept pixels
        p, y = prob[:, c][kept], (ids[:, 0] == c)[kept].float()
        dice.append(1 - 2 * (p * y).sum() / (p.sum() + y.sum()) if y.sum() > 0 else 0 * p.sum())
    expected = ce + torch.stack(dice).mean()
    assert torch.allclose(mask_loss(logits, ids), expected, atol=1e-5)
    assert torch.allclose(sum(multiclass_parts(logits, ids)), expected, atol=1e-5)


def test_mask_loss_ignores_the_ignored_pixels() -> None:
    logits, ids = _logits_and_ids(seed=1)
    logits.requires_grad_(True)
    loss = mask_loss(logits, ids)
    loss.backward()
    assert (logits.grad[:, :, :3, :3] == 0).all() and logits.grad.abs().sum() > 0
    changed = logits.detach().clone()
    changed[:, :, :3, :3] = 50 * torch.randn(3, K, 3, 3)
    assert torch.allclose(mask_loss(changed, ids), loss.detach())
    every = torch.full_like(ids, IGNORE_ID)  # nothing kept: 0, not NaN
    assert mask_loss(logits.detach(), every).item() == 0


def test_mask_loss_binary_path_unchanged() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 1, 8, 8, generator=gen)
    target = (torch.rand(2, 1, 8, 8, generator=gen) > 0.5).float()
    prob = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((1, 2, 3))
    dice = 1 - (2 * (prob * target).sum((1, 2, 3)) + 1) / (prob.sum((1, 2, 3))
                                                           + target.sum((1, 2, 3)) + 1)
    assert torch.allclose(mask_loss(logits, target), (bce + dice).mean())
    with pytest.raises(ValueError, match="integer class-id target"):
        mask_loss(torch.randn(2, K, 8, 8), target)


def test_structure_loss_with_two_classes_is_the_binary_one() -> None:
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 1, 40, 40, generator=gen) * 3
    target = torch.zeros(2, 1, 40, 40)
    target[0, :, 5:25, 10:30] = 1
    target[1, :, 20:, :] = 1
    two = torch.cat([torch.zeros_like(z), z], 1)  # softmax of (0, z) is sigmoid(z)
    for got, expected in zip(multiclass_structure_parts(two, target.long()),
                             structure_parts(z, target), strict=True):
        assert torch.allclose(got, expected, atol=1e-5)


def test_structure_loss_k_form_leaves_out_ignored_pixels() -> None:
    logits, ids = _logits_and_ids(seed=4, size=40)
    changed = logits.clone()
    changed[:, :, :3, :3] = 40 * torch.randn(3, K, 3, 3)
    loss = StructureLoss()
    first = loss({"image": ModelOutput(mask=logits)}, ids)
    assert set(first) == {"loss", "wce", "wiou"} and torch.isfinite(first["loss"])
    again = loss({"image": ModelOutput(mask=changed)}, ids)
    assert torch.allclose(first["loss"], again["loss"], atol=1e-6)
    prob, truth = lossnet_maps(logits, ids)  # LossNet: each foreground class in turn
    assert prob.shape == truth.shape == (3 * (K - 1), 1, 40, 40)
    assert (prob.view(3, K - 1, 40, 40)[:, :, :3, :3] == 0).all()
    assert torch.equal(truth.view(3, K - 1, 40, 40)[:, 1], (ids[:, 0] == 2).float())


def test_structure_loss_with_lossnet_takes_k_classes(vgg_file: Path) -> None:
    logits, ids = _logits_and_ids(seed=5, b=1, k=3, size=16)  # LossNet's VGG is slow on a CPU
    loss = StructureLoss(lossnet=True, lossnet_weights=vgg_file)
    parts = loss({"image": ModelOutput(mask=logits)}, ids)
    each = [loss.lossnet(*(x.view(1, 2, 1, 16, 16)[:, c] for x in lossnet_maps(logits, ids)))
            for c in range(2)]
    assert torch.allclose(parts["lossnet"], torch.stack(each).mean(), rtol=1e-4)


def test_every_loss_has_a_k_class_form_or_refuses() -> None:
    logits, ids = _logits_and_ids(seed=6, size=16)
    outputs = {"image": ModelOutput(mask=logits), "strong": ModelOutput(mask=logits)}
    for name in LOSSES.names():
        cls = LOSSES.get(name)
        if not cls.__module__.startswith("condseg."):
            continue  # a loss other tests register (a user's says what it likes)
        assert cls.binary_only != bool(cls.multiclass), name  # one or the other, said
        if name == "ce-pdcr":
            continue  # needs the pdcr plug-in's features: its family's tests
        loss = create_loss(name)
        if cls.binary_only:
            with pytest.raises(LossError, match="binary by design"):
                loss(outputs, ids)
        else:
            assert torch.isfinite(loss(outputs, ids)["loss"]), name


def test_class_sums_leave_out_absent_classes() -> None:
    logits = torch.full((2, 3, 4, 4), -5.0)
    logits[:, 0] = 5  # everything predicted background ...
    logits[0, 1, :2] = 10  # ... but image 0's top half class 1
    ids = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    ids[0, 0, :1] = 1
    ids[0, 0, 3, 3] = IGNORE_ID  # image 1: background only, nothing to score
    sums = class_sums(logits, ids)
    assert sums.shape == (len(VAL_SCORES) + 1, 3)
    row = {name: sums[i] for i, name in enumerate(VAL_SCORES)}
    assert row["dice"][1].item() == pytest.approx(2 * 4 / (8 + 4))
    assert row["iou"][1].item() == pytest.approx(4 / 8)
    assert row["recall"][1].item() == 1 and row["precision"][1].item() == pytest.approx(0.5)
    # class 2 in neither image, image 1 holds no class: counted nowhere (missing, not 1)
    assert sums[-1].tolist() == [1, 1, 0] and row["dice"][2].item() == 0
    assert row["dice"][0].item() == pytest.approx(2 * 4 / (8 + 4))  # image 0's mean: class 1


# --- K into the run -------------------------------------------------------------------------


def test_num_classes_comes_from_the_dataset(layers: Path, tmp_path: Path) -> None:
    config = load_config("default", ["method=unet"])
    with_k = with_dataset_classes(config, layers)
    assert with_k.model.options["num_classes"] == K
    assert with_dataset_classes(with_k, layers) == with_k  # the same value: accepted
    binary = synthesize(tmp_path / "binary", n_train=2, n_val=1, size=32)
    assert with_dataset_classes(config, binary) == config  # binary: no new key
    for given, root in ((3, layers), (K, binary)):
        wrong = load_config("default", ["method=unet", f"model.options.num_classes={given}"])
        with pytest.raises(TrainingError, match="take") as exc:
            with_dataset_classes(wrong, root)
        assert "\n" not in str(exc.value) and f"num_classes={given}" in str(exc.value)
    _declare(binary, {"labels": {"background": 0, "polyp": 255}, "ignore": 128})
    with pytest.raises(DataError, match="one class and ignored pixels"):
        with_dataset_classes(config, binary)  # binary + ignore stays refused


def test_one_epoch_on_the_layers_task(layers: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--method", "unet", "--data", str(layers), "--out", str(run), "--stage",
        "train", "--epochs", "1", "model.options.encoder=resnet18", "model.pretrained=false",
        "model.options.decoder_channels=[32,16,16,8,8]", "data.size=32", "data.batch_size=2",
        "data.num_workers=0", "progress_bar=false", "precision=32",
        "log_images_every_n_epochs=1",  # TensorBoard's grid draws class ids too
    ], terminal_width=400)
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["options"]["num_classes"] == K
    lines = result.output.splitlines()
    assert any(line.startswith("classes: background, rnfl, gcipl, choroid (K 4") for line in lines)
    header = next(line for line in lines if line.startswith("train: unet"))
    assert f"loss bce-dice (with K classes: {LOSSES.get('bce-dice').multiclass})" in header
    epoch = next(line for line in lines if line.startswith("train epoch 1/1:"))
    for name in ("rnfl", "gcipl", "choroid"):
        assert f"Dice {name} " in epoch, epoch
    header_of_file = read_header(run / "train" / "model.safetensors")
    assert header_of_file["classes"] == ["background", "rnfl", "gcipl", "choroid"]
    assert header_of_file["arch"]["options"]["num_classes"] == K
    metrics = (run / "train" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_dice_rnfl", "val_dice_gcipl", "val_dice_choroid", "val_mdsc"} <= set(metrics)
    assert list((run / "train" / "tensorboard").rglob("events.out.tfevents.*"))


def test_a_binary_loss_is_refused_before_anything_is_written(layers: Path,
                                                             tmp_path: Path) -> None:
    config = load_config("default", ["method=unet", "model.options.encoder=resnet18",
                                     "model.pretrained=false", "stages.train.loss.name=condseg-sid",
                                     "data.size=32", "data.num_workers=0"])
    with pytest.raises(TrainingError, match="loss 'condseg-sid' takes one logit map") as exc:
        train(config, layers, tmp_path / "run", console=Console(quiet=True))
    assert "\n" not in str(exc.value) and "stages.train.loss.name=bce-dice" in str(exc.value)
    assert not (tmp_path / "run").exists()


def test_condseg_refuses_classes_before_anything_is_written(layers: Path, tmp_path: Path) -> None:
    for stage in ("all", "1"):  # stage 1 alone trains Net_0: binary by design too
        run = tmp_path / stage
        result = runner.invoke(app, ["train", "--method", "condseg", "--data", str(layers),
                                     "--out", str(run), "--stage", stage, "data.num_workers=0"],
                               terminal_width=300)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output
        assert "binary by design" in lines[0] and "num_classes 4" in lines[0], lines[0]
        assert not run.exists()


def _tiny_train(layers: Path, run: Path, *extra: str):
    return runner.invoke(app, [
        "train", "--method", "unet", "--data", str(layers), "--out", str(run), "--stage",
        "train", "model.options.encoder=resnet18", "model.pretrained=false",
        "model.options.decoder_channels=[32,16,16,8,8]", "data.size=32", "data.batch_size=2",
        "data.num_workers=0", "progress_bar=false", "precision=32", *extra,
    ], terminal_width=400)


@pytest.mark.parametrize("monitor", ["val/recall", "val/precision"])
def test_every_plateau_monitor_exists_for_k_classes(layers: Path, tmp_path: Path,
                                                    monitor: str) -> None:
    """Each monitor config.py allows is logged on the K-class path too, and TensorBoard's
    best val mIoU is the epoch's own (not the one before)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = _tiny_train(layers, run, "--epochs", "2", "stages.train.schedule.name=plateau",
                         f"stages.train.schedule.monitor={monitor}")
    assert result.exit_code == 0, result.output
    with open(run / "train" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("val_miou")]
    assert len(rows) == 2
    for row in rows:
        for name in ("val_recall", "val_precision", "val_miou", "val_mdsc"):
            assert 0 <= float(row[name]) <= 100, (name, row)
    events = EventAccumulator(str(run / "train" / "tensorboard"))
    events.Reload()
    best = [s.value for s in events.Scalars("hp/best_val_miou")]
    mious = [float(row["val_miou"]) for row in rows]
    assert best[-2:] == pytest.approx([max(mious[:1]), max(mious)], rel=1e-4)


def test_validation_logs_no_nan_and_always_the_means() -> None:
    classes = ("background", "a", "b")
    logits, ids = _logits_and_ids(seed=7, k=3)
    ids[ids == 2] = 0
    logits[:, 2] = -1e3  # class b in no ground truth and no prediction: absent from the split
    metrics = class_metrics(class_sums(logits, ids), classes)
    assert set(metrics) == {"val/miou", "val/mdsc", "val/recall", "val/precision", "val/dice/a"}
    assert all(torch.isfinite(v) for v in metrics.values())
    nothing = class_sums(torch.zeros(2, 3, 4, 4).index_fill(1, torch.tensor([0]), 1.0),
                         torch.zeros(2, 1, 4, 4, dtype=torch.long))  # background only
    assert class_metrics(nothing, classes) == {  # nothing to score: means 0 (decisions.md)
        k: 0 for k in ("val/miou", "val/mdsc", "val/recall", "val/precision")}


def test_cv_records_the_k_class_columns(layers: Path, tmp_path: Path) -> None:
    """cv_runs.csv, cv_summary.json and the ensemble's header carry the evaluations' K-class
    columns (foreground means, per-class scores), not the binary-only ones."""
    root = tmp_path / "d"
    shutil.copytree(layers, root)
    names = read_split(root, "train")
    for k in range(2):
        folder = root / "folds" / str(k)
        folder.mkdir(parents=True)
        (folder / "val.txt").write_text("\n".join(names[2 * k: 2 * k + 2]) + "\n")
        (folder / "train.txt").write_text(
            "\n".join(n for n in names if n not in names[2 * k: 2 * k + 2]) + "\n")
    config = load_config("default", [
        "method=unet", "model.options.encoder=resnet18", "model.pretrained=false",
        "model.options.decoder_channels=[32,16,16,8,8]", "data.size=32", "data.batch_size=2",
        "data.num_workers=0", "stages.train.max_epochs=1", "stages.train.limit_train_batches=1",
        "progress_bar=false", "precision=32"])
    result = cross_validate(config, root, tmp_path / "cv", console=Console(quiet=True))
    expected = class_metric_names(("background", "rnfl", "gcipl", "choroid"))
    header = (tmp_path / "cv" / "cv_runs.csv").read_text().splitlines()[0].split(",")
    assert header == ["run", "fold", "seed", *expected]
    summary = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())["metrics"]
    assert list(summary) == list(expected) and summary["dice/rnfl"]["n"] == 2
    metrics = read_header(result.ensemble_file)["metrics"]
    assert set(metrics) == set(expected)
    binary_only = {"s_measure", "e_measure_mean", "e_measure_max", "weighted_f", "mae",
                   "specificity", "f2"}
    assert not binary_only & {*header, *summary, *metrics}
