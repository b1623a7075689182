"""What training costs, and curves that follow it: a stage's training FLOPs per image against
torch's flop counter over an explicit step on real tensors (every view, every multi-scale size),
each epoch's cost in metrics.csv (tiny trainings: the images seen, counted by a spy on the
training steps, times FLOPs per image), and ``compare --curves-x`` drawing a two-stage run as one
line against cumulative TFLOP or time, with a note for logs written before the cost was."""

from __future__ import annotations

import csv
import statistics
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from condseg.cli import app
from condseg.config import RunConfig, load_config
from condseg.data.synthetic import synthesize
from condseg.epoch_log import SECONDS, TFLOP, read_epochs
from condseg.evaluation.compare import compare, read_run
from condseg.evaluation.compare.curves import CURVE_TITLES, axis_label, run_curves
from condseg.losses.mask import mask_loss
from condseg.models.base import use_plain_kernels
from condseg.models.registry import create_model
from condseg.training import train
from condseg.training.cost import flops_per_image, stage_flops
from condseg.training.module import SegmentationModule
from condseg.training.plan import StageParts, plan_stages, stage_parts
from test_compare import write_evaluation, write_run

COUNTED = 2  # images per counted step (BatchNorm trains on more than one)
TINY_CONDSEG = ["data.size=64", "data.batch_size=4", "data.num_workers=0",
                "model.options.width=16", "model.options.encoder=resnet18",
                "model.pretrained=false", "progress_bar=false", "precision=32"]


def parts_of(config: RunConfig, stage: str) -> StageParts:
    return stage_parts(plan_stages(config, [stage])[stage], config)


def oracle_flops(parts: StageParts, size: int, *, one_view: bool = False) -> float:
    """torch's flop counter over an explicit training step of the stage's network on real CPU
    tensors, per image: a forward pass of every view its loss needs (``one_view``: the image
    alone, with L_mask), the loss and the backward pass, on the plain kernels."""
    torch.manual_seed(0)
    plan = parts.plan
    network = create_model(plan.model, pretrained=False, **plan.options)
    use_plain_kernels(network, True)
    network.train()
    views = ("image",) if one_view else ("image", *parts.loss.views)
    images = {view: torch.randn(COUNTED, 3, size, size) for view in views}
    mask = (torch.rand(COUNTED, 1, size, size) > 0.5).float()
    with FlopCounterMode(display=False) as counter:
        outputs = {view: network(images[view]) for view in views}
        loss = (mask_loss(outputs["image"].mask, mask) if one_view
                else parts.loss(outputs, mask)["loss"])
        loss.backward()
    return counter.get_total_flops() / COUNTED


# --------------------------------------------------------------------------- FLOPs per image


@pytest.mark.parametrize("method", ["unet", "deeplabv3plus"])
def test_flops_per_image_of_a_baseline_is_torchs_count_of_a_real_step(method: str) -> None:
    config = load_config("default", [f"method={method}", "model.options.encoder=resnet18",
                                     "model.pretrained=false", "data.size=64"])
    parts = parts_of(config, "train")
    assert parts.batch_hook is None and not parts.loss.views
    counted = flops_per_image(parts, 64)
    assert counted == oracle_flops(parts, 64)
    assert counted > 3 * oracle_flops(parts, 32)  # it scales with the pixels: no constant


@pytest.mark.parametrize("method", ["msnet", "m2snet", "chnet"])
def test_a_multi_scale_stage_costs_the_mean_over_its_sizes(method: str) -> None:
    sizes = [32, 64]
    config = load_config("default", [
        f"method={method}", "model.options.encoder=resnet18", "model.pretrained=false",
        "data.size=64", f"stages.train.batch_hook.options.sizes={sizes}".replace(" ", ""),
        *(["stages.train.loss.options.lossnet=false"] if method != "chnet" else [])])
    parts = parts_of(config, "train")
    assert parts.batch_hook is not None and list(parts.batch_hook.sizes) == sizes
    single = [oracle_flops(parts, s) for s in sizes]
    assert single[0] < single[1]
    assert flops_per_image(parts, 64) == pytest.approx(statistics.fmean(single), rel=1e-12)
    # without the hook, the stage costs its one size
    assert flops_per_image(replace(parts, batch_hook=None), 64) == single[1]


def test_condseg_stage1_counts_both_views() -> None:
    config = load_config("demo", [*TINY_CONDSEG, "data.size=32"])
    parts = parts_of(config, "stage1")
    assert parts.loss.views  # the consistency loss's second view
    counted = flops_per_image(parts, 32)
    assert counted == oracle_flops(parts, 32)
    assert 1.95 < counted / oracle_flops(parts, 32, one_view=True) < 2.05


# --------------------------------------------------------------------------- metrics.csv


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny two-stage ConDSeg (10 training images in batches of 4): stage 1 two epochs of one
    batch (a limit), stage 2 one epoch of every full batch (the last two images dropped); the
    images each training step saw, by stage and epoch."""
    root = tmp_path_factory.mktemp("cost")
    data = synthesize(root / "data", n_train=10, n_val=2, size=64)
    config = load_config("demo", [*TINY_CONDSEG, "stages.stage1.max_epochs=2",
                                  "stages.stage1.limit_train_batches=1",
                                  "stages.stage2.max_epochs=1"])
    seen: dict[tuple[str, int], int] = {}
    step = SegmentationModule.training_step

    def counting(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        key = (self.stage_name, self.current_epoch + 1)
        seen[key] = seen.get(key, 0) + len(batch["image"])
        return step(self, batch, batch_idx)

    SegmentationModule.training_step = counting
    start = time.perf_counter()
    try:
        result = train(config, data, root / "run", console=Console(file=None, quiet=True))
    finally:
        SegmentationModule.training_step = step
    return {"run": result.run_dir, "seen": seen, "wall": time.perf_counter() - start,
            "data": data}


def _rows(stage_dir: Path) -> list[dict[str, str]]:
    with (stage_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_each_epoch_logs_its_seconds_and_the_tflop_of_the_images_it_saw(two_stage: dict) -> None:
    run, seen = two_stage["run"], two_stage["seen"]
    assert seen == {("stage1", 1): 4, ("stage1", 2): 4, ("stage2", 1): 8}
    recorded = load_config(run / "config.yaml")
    total = 0.0
    for stage in ("stage1", "stage2"):
        rows = _rows(run / stage)
        assert list(rows[0])[-4:-2] == [SECONDS, TFLOP]  # before the learning rates
        per_image = stage_flops(recorded, stage)
        for row in rows:
            images = seen[(stage, int(row["epoch"]))]
            assert float(row[TFLOP]) == images * per_image / 1e12
            assert float(row[SECONDS]) > 0
            total += float(row[SECONDS])
    assert total <= two_stage["wall"]


def test_a_partial_batch_counts_its_images(tmp_path: Path) -> None:
    data = synthesize(tmp_path / "data", n_train=3, n_val=1, size=64)
    config = load_config("default", [
        "method=unet", "model.options.encoder=resnet18", "model.pretrained=false",
        "model.options.decoder_channels=[32,16,16,8,8]", "data.size=64", "data.batch_size=4",
        "data.num_workers=0", "stages.train.max_epochs=1", "progress_bar=false"])
    train(config, data, tmp_path / "run", console=Console(file=None, quiet=True))
    (row,) = _rows(tmp_path / "run" / "train")
    per_image = stage_flops(load_config(tmp_path / "run" / "config.yaml"), "train")
    assert float(row[TFLOP]) == 3 * per_image / 1e12  # one batch of 3: the split is smaller


def test_an_epoch_resumed_mid_way_counts_every_image_trained_into_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two epochs of two batches of 2, with a checkpoint after every step, stopped twice (here:
    by a non-finite loss): at the second step of epoch 1, resumed mid-epoch, whose count
    carries the first step's images from the checkpoint; then at the first step of epoch 2,
    resumed from epoch 1's end, whose count starts afresh."""
    from condseg.errors import TrainingError
    from condseg.methods.condseg.losses import ConsistencyLoss

    data = synthesize(tmp_path / "data", n_train=4, n_val=1, size=64)
    config = load_config("demo", [*TINY_CONDSEG, "data.batch_size=2", "train_stages=[stage1]",
                                  "stages.stage1.max_epochs=2", "checkpoint_every_n_steps=1",
                                  "checkpoint_every_minutes=null"])
    original, calls = ConsistencyLoss.forward, []

    def nan_at_steps_2_and_4(self, outputs, target):  # type: ignore[no-untyped-def]
        losses = original(self, outputs, target)
        if not target.is_meta:  # not the FLOP count as the stage starts
            calls.append(1)
            if len(calls) in (2, 4):
                losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(ConsistencyLoss, "forward", nan_at_steps_2_and_4)
    quiet = Console(file=None, quiet=True)
    for epoch, resume in ((0, False), (1, True)):
        with pytest.raises(TrainingError, match=f"stage1, epoch {epoch}, step"):
            train(config, data, tmp_path / "run", resume=resume, console=quiet)
    train(config, data, tmp_path / "run", resume=True, console=quiet)
    assert len(calls) == 6  # 4 steps, 2 of them tried twice
    stage = tmp_path / "run" / "stage1"
    assert len(list((stage / "csv").glob("version_*"))) == 3
    per_image = stage_flops(load_config(tmp_path / "run" / "config.yaml"), "stage1")
    rows = _rows(stage)
    assert [float(r[TFLOP]) for r in rows] == [4 * per_image / 1e12] * 2
    assert all(float(r[SECONDS]) > 0 for r in rows)


# --------------------------------------------------------------------------- curves


def test_a_two_stage_run_is_one_line_whose_x_grows_across_its_stages(
    two_stage: dict, tmp_path: Path
) -> None:
    run = read_run(two_stage["run"])
    assert run.stages == ("stage1", "stage2")
    assert run.stage_logs == [two_stage["run"] / s / "metrics.csv" for s in run.stages]
    epochs = [read_epochs(p) for p in run.stage_logs]
    for axis, column in (("tflop", TFLOP), ("time", SECONDS)):
        curves = run_curves(run.stage_logs, list(CURVE_TITLES), axis)
        assert set(curves) == set(CURVE_TITLES)
        spent, expected = 0.0, []
        for log in epochs:
            for _, row in sorted(log.items()):
                spent += row[column]
                expected.append(spent)
        for key, curve in curves.items():
            assert curve.x == pytest.approx(expected, rel=1e-12)
            assert all(a < b for a, b in zip(curve.x, curve.x[1:], strict=False))
            assert curve.starts == (2,)  # stage 2's first point
            assert list(curve.y) == [log[e][key] for log in epochs for e in sorted(log)]
    by_epoch = run_curves(run.stage_logs, list(CURVE_TITLES), "epoch")
    assert by_epoch["val_mdsc"].x == (1,) and by_epoch["val_mdsc"].starts == ()  # as before

    figures = tmp_path / "figures"
    result = CliRunner().invoke(app, ["compare", str(two_stage["run"]), "--figure",
                                      str(figures), "--images", "1", "--curves-x", "tflop"])
    assert result.exit_code == 0, result.output
    assert "dashed segment joins a stage's last epoch" in result.output
    assert (figures / "curves.png").is_file() and (figures / "curves.pdf").is_file()
    bad = CliRunner().invoke(app, ["compare", str(two_stage["run"]), "--curves-x", "flops"])
    assert bad.exit_code == 2
    assert "error: --curves-x 'flops': give one of epoch, tflop, time" in bad.output


def test_a_log_without_the_cost_columns_gets_a_note(two_stage: dict, tmp_path: Path) -> None:
    old = write_run(tmp_path / "old", "unet")  # a Lightning log, as older runs left it
    names = (two_stage["data"] / "val.txt").read_text().split()
    write_evaluation(old / "evaluation" / "val", [0.5] * len(names), names=names,
                     data_root=str(two_stage["data"]), split="val", model="unet")
    for axis, column in (("tflop", TFLOP), ("time", SECONDS)):
        figures = tmp_path / f"figures-{axis}"
        result = compare([two_stage["run"], old], figure_dir=figures, images=1, curves_x=axis)
        note = (f"unet has no curve in curves.png against {axis}: {old / 'stage1' / 'metrics.csv'}"
                f" records no {column} for epoch 1 (written before condseg logged each epoch's "
                "cost); draw it with --curves-x epoch")
        assert note in result.notes
        assert figures / "curves.png" in result.written  # the other run is drawn
        alone = compare([old], figure_dir=tmp_path / f"alone-{axis}", images=1, curves_x=axis)
        assert "curves.png not written: no input has a training log to draw" in alone.notes
    result = compare([old], figure_dir=tmp_path / "epochs", images=1)
    assert not [n for n in result.notes if "curve" in n]  # epochs: drawn as before


def test_time_axis_is_in_minutes_or_hours() -> None:
    assert axis_label("time", 600) == (
        "cumulative training wall time, minutes (all stages)", 1 / 60)
    assert axis_label("time", 4 * 3600) == (
        "cumulative training wall time, hours (all stages)", 1 / 3600)
    assert axis_label("tflop", 5.0) == ("cumulative training TFLOP (all stages)", 1.0)
    assert axis_label("epoch", 5.0) == ("epoch", 1.0)
