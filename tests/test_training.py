"""Two-stage training on a tiny synthetic dataset (64 px, width 16, ResNet-18, a few steps)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console

from condseg.config import RunConfig, load_config
from condseg.data.synthetic import synthesize
from condseg.errors import TrainingError
from condseg.losses import create_loss
from condseg.methods.condseg.losses import ConsistencyLoss
from condseg.models.model_file import load_model, read_header
from condseg.models.registry import create_model
from condseg.training import TrainResult, train
from condseg.training import stage as stage_module
from condseg.training import trainer as trainer_module
from condseg.training.module import SegmentationModule
from condseg.training.recipe import resolve_precision


def tiny_config(*overrides: str) -> RunConfig:
    return load_config("demo", [
        "data.size=64", "data.batch_size=4", "data.num_workers=0", "model.options.width=16",
        "model.options.encoder=resnet18", "stages.stage1.max_epochs=2",
        "stages.stage2.max_epochs=1", "stages.stage1.limit_train_batches=2",
        "stages.stage2.limit_train_batches=2", "progress_bar=false",
        # The recipe's stage-2 flips, with which the seeded loss record was made.
        "stages.stage2.augmentation.p_flip=0.3", "log_every_n_steps=1",
        "keep_best_checkpoint=true",  # these tests read best.ckpt
        # The loss record was made in float32: `auto` would pick bf16-mixed on a CPU with
        # native bf16, and the record would then hold only on the other kind of CPU.
        "precision=32", *overrides,
    ])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth"), n_train=8, n_val=4, size=64)


@pytest.fixture(scope="module")
def two_stage(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One full two-stage run; records the stage-2 network as built, before it trains."""
    built: dict[int, dict[str, torch.Tensor]] = {}
    original = stage_module._build_model

    def spy(plan, *args, **kwargs):
        model = original(plan, *args, **kwargs)
        built[plan.name] = {k: v.clone() for k, v in model.encoder.state_dict().items()}
        return model

    stage_module._build_model = spy
    console = Console(record=True, width=400)
    try:
        result = train(tiny_config(), data_root, tmp_path_factory.mktemp("runs") / "run",
                       console=console)
    finally:
        stage_module._build_model = original
    return {"result": result, "built": built, "text": console.export_text()}


def test_run_dir_holds_config_checkpoints_logs_curves_and_model_files(
    two_stage: dict, data_root: Path
) -> None:
    result: TrainResult = two_stage["result"]
    run = result.run_dir
    # precision: auto is recorded as what it resolved to on this machine.
    recorded = load_config(run / "config.yaml")
    assert recorded == resolve_precision(tiny_config(f"data.root={data_root}"))
    assert recorded.precision in ("32", "bf16-mixed")
    for n in ("stage1", "stage2"):
        stage = run / n
        for f in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.csv",
                  "curves.png", "model.safetensors", "result.json"):
            assert (stage / f).is_file(), f"missing {stage / f}"
        assert any((stage / "tensorboard").glob("events.out.tfevents.*"))
        assert result.model_files[n] == stage / "model.safetensors"
        metrics = result.best_metrics[n]
        assert 0 <= metrics["miou"] <= metrics["mdsc"] <= 1
        header = read_header(result.model_files[n])
        assert header["metrics"]["miou"] == pytest.approx(metrics["miou"])
        assert header["input_size"] == [64, 64] and header["mean"] == [0.485, 0.456, 0.406]
        assert header["config"]["model"]["options"]["width"] == 16
    assert read_header(result.model_files["stage1"])["arch"]["name"] == "condseg-net0"
    assert read_header(result.model_file)["arch"]["name"] == "condseg"
    # No test split in the synthetic data: the final model on val, where compare looks.
    assert result.evaluation_dir == run / "evaluation" / "val"
    protocol = json.loads((run / "evaluation" / "val" / "summary.json").read_text())["protocol"]
    assert (protocol["split"], protocol["n_images"], protocol["model"]) == ("val", 4, "condseg")
    assert protocol["execution"]["precision"] == "float32"  # evaluation numbers: float32
    assert "no test.txt: the validation split, which selected the model" in two_stage["text"]


def test_run_header_states_device_precision_sizes_and_each_stage_recipe(
    two_stage: dict, data_root: Path
) -> None:
    lines = two_stage["text"].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("method condseg:"))
    result: TrainResult = two_stage["result"]
    precision = load_config(result.run_dir / "config.yaml").precision
    params = {n: sum(p.numel() for p in load_model(f).parameters())
              for n, f in result.model_files.items()}
    assert lines[start:start + 4] == [
        f"method condseg: device cpu (devices auto), precision {precision}, seed 42",
        f"data {data_root}: train 8, val 4",
        f"stage1: condseg-net0 ({params['stage1']:,} parameters), loss condseg-cr, adam lr "
        "0.001 (encoder 0.001), schedule plateau, epochs 2, size 64, batch 4",
        f"stage2: condseg ({params['stage2']:,} parameters), loss condseg-sid, adam lr "
        "0.001 (encoder 0.0003), schedule plateau, epochs 1, size 64, batch 4",
    ]
    finished = next(i for i, line in enumerate(lines) if "stage1: best val mIoU" in line)
    assert start < finished  # printed before training starts


@pytest.mark.parametrize(("cuda", "cuda_bf16", "cpu_bf16", "expected"), [
    (False, False, True, "bf16-mixed"),   # a CPU with AVX512-BF16 or AMX
    (False, False, False, "32"),          # this kind of CPU: bf16 would be emulated
    (True, True, False, "bf16-mixed"),    # a GPU with bf16
    (True, False, True, "32"),            # a GPU without (not fp16: not asked for)
])
def test_precision_auto_is_bf16_mixed_only_where_the_hardware_runs_bf16(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, cuda_bf16: bool, cpu_bf16: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setattr("condseg.training.recipe.cpu_supports_bf16", lambda: cpu_bf16)
    assert load_config("demo").precision == "auto"  # the default
    assert resolve_precision(load_config("demo")).precision == expected
    assert resolve_precision(load_config("demo", ["accelerator=cpu"])).precision == (
        "bf16-mixed" if cpu_bf16 else "32")
    assert resolve_precision(load_config("demo", ["precision=32"])).precision == "32"


@pytest.mark.parametrize("cpu_bf16", [True, False])
def test_the_runs_whose_figures_are_recorded_state_their_precision(
    monkeypatch: pytest.MonkeyPatch, cpu_bf16: bool
) -> None:
    """A record made in float32 holds on every CPU only if its run says float32: ``auto`` is
    bf16-mixed on a CPU with AVX512-BF16 or AMX, 32 elsewhere. Checked for each kind of CPU,
    for the seeded loss record and for the real-data run whose losses must decrease."""
    from test_real_data import real_data_config

    monkeypatch.setattr("condseg.training.recipe.cpu_supports_bf16", lambda: cpu_bf16)
    for config in tiny_config(), real_data_config():
        assert resolve_precision(config).precision == "32"


def test_model_file_holds_the_best_checkpoint(two_stage: dict) -> None:
    result: TrainResult = two_stage["result"]
    ckpt = torch.load(result.run_dir / "stage1/checkpoints/best.ckpt", weights_only=True)
    model = load_model(result.model_files["stage1"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"model.{key}"]), key
    assert result.best_metrics["stage1"]["epoch"] == ckpt["epoch"] + 1  # counted from 1


def test_stage2_starts_from_the_best_stage1_encoder_with_bn_buffers(two_stage: dict) -> None:
    result: TrainResult = two_stage["result"]
    expected = load_model(result.model_files["stage1"]).encoder.state_dict()
    loaded = two_stage["built"]["stage2"]
    assert loaded.keys() == expected.keys()
    assert any("running_var" in k for k in loaded) and any("num_batches_tracked" in k
                                                           for k in loaded)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    # The comparison can fail: training moved the stats away from a fresh encoder's.
    fresh = create_model("condseg", width=16, encoder="resnet18").encoder.state_dict()
    assert not torch.equal(fresh["bn1.running_var"], loaded["bn1.running_var"])


def test_param_groups_give_the_encoder_its_own_lr() -> None:
    config = tiny_config()
    model = create_model("condseg", width=16, encoder="resnet18")
    loss = create_loss("condseg-sid")
    setup = SegmentationModule(model, loss, config.stages["stage2"]).configure_optimizers()
    groups = setup["optimizer"].param_groups
    assert [(g["name"], g["lr"]) for g in groups] == [("encoder", 3e-4), ("rest", 1e-3)]
    paper = load_config("kvasir-seg").stages["stage2"]
    groups = SegmentationModule(model, loss, paper).configure_optimizers()["optimizer"].param_groups
    assert [g["lr"] for g in groups] == [1e-5, 1e-4]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.encoder.parameters()}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    plateau = setup["lr_scheduler"]
    assert plateau["monitor"] == "val/loss" and plateau["scheduler"].patience == 30


def test_finished_run_is_not_overwritten_and_resume_skips_finished_stages(
    two_stage: dict, data_root: Path
) -> None:
    result: TrainResult = two_stage["result"]
    with pytest.raises(TrainingError, match=r"is not empty.*resume=True"):
        train(tiny_config(), data_root, result.run_dir)
    with pytest.raises(TrainingError, match=r"different experiment \(changed: seed\)"):
        train(tiny_config("seed=1"), data_root, result.run_dir, resume=True)
    before = result.model_file.stat().st_mtime_ns
    again = train(tiny_config(), data_root, result.run_dir, resume=True)
    assert again.model_files == result.model_files and again.best_metrics == result.best_metrics
    assert result.model_file.stat().st_mtime_ns == before


RECORD = Path(__file__).parent / "data" / "condseg_tiny_two_stage_losses.json"


def test_seeded_two_stage_losses_reproduce_the_record(two_stage: dict) -> None:
    """Per-step training losses and per-epoch validation figures of the seeded tiny run, recorded
    before the engine became method-agnostic (tests/data), are reproduced."""
    record = json.loads(RECORD.read_text())
    run = two_stage["result"].run_dir
    for stage, expected in record.items():
        with (run / stage / "csv" / "version_0" / "metrics.csv").open() as f:  # Lightning's
            rows = list(csv.DictReader(f))
        got = {
            "train_loss_step": [float(r["train/loss_step"]) for r in rows
                                if r.get("train/loss_step")],
            "val_miou": [float(r["val/miou"]) for r in rows if r.get("val/miou")],
            "val_loss": [float(r["val/loss"]) for r in rows if r.get("val/loss")],
        }
        for key, values in expected.items():
            assert got[key] == pytest.approx(values, rel=1e-4, abs=1e-5), (stage, key)


def _val_epochs(metrics_csv: Path) -> list[int]:
    with metrics_csv.open() as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r.get("val_miou")]


def test_non_finite_loss_stops_keeping_last_good_checkpoint_then_resume_continues(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = ConsistencyLoss.forward
    calls = []

    def nan_in_second_epoch(self, outputs, target):
        losses = original(self, outputs, target)
        if target.is_meta:  # the stage's FLOP count as it starts, not a training step
            return losses
        calls.append(1)
        if len(calls) > 2:  # two training steps per epoch; validation does not call it
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(ConsistencyLoss, "forward", nan_in_second_epoch)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"non-finite training loss nan in stage stage1, "
                                            r"epoch 1.*last good checkpoint is .*last\.ckpt"):
        train(tiny_config(), data_root, run, stage="stage1")
    last = run / "stage1/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    assert not (run / "stage1/result.json").exists()

    monkeypatch.undo()
    result = train(tiny_config(), data_root, run, stage="1", resume=True)  # by number
    assert list(result.model_files) == ["stage1"]
    assert json.loads((run / "stage1/result.json").read_text())["metrics"]
    # Epoch 1 was validated once, in the first run: the resumed run started at epoch 2.
    assert _val_epochs(run / "stage1/metrics.csv") == [1, 2]
    assert torch.load(last, weights_only=True)["epoch"] == 1


def test_stage2_alone_needs_a_finished_stage1(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"takes its encoder from stage stage1.*"
                                            r"stages\.stage2\.init\.encoder=null"):
        train(tiny_config(), data_root, tmp_path / "run", stage="stage2")


def test_dataset_errors_block_training_unless_skipped(data_root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "data"
    shutil.copytree(data_root, broken)
    bad = sorted((broken / "images").iterdir())[0]
    bad.write_bytes(b"not an image")
    with pytest.raises(TrainingError, match=rf"error.*data\.skip=\[{bad.stem}\]"):
        train(tiny_config(), broken, tmp_path / "run1")
    assert not (tmp_path / "run1" / "stage1").exists()
    config = tiny_config(f"data.skip=[{bad.stem}]", "stages.stage1.max_epochs=1",
                         "stages.stage1.limit_train_batches=1", "stages.stage1.limit_val_batches=1")
    result = train(config, broken, tmp_path / "run2", stage="stage1")
    assert result.model_files["stage1"].is_file()


@pytest.mark.parametrize("plain", [False, True])
def test_bf16_channels_last_trains_on_cpu_on_either_kernels(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plain: bool
) -> None:
    """bf16 autocast and channels_last (a GPU's training layout) on the fast kernels (with
    recomputation) through both stages, and on the plain kernels (stage 2 alone); losses stay
    finite."""
    seen = []
    step = SegmentationModule.training_step

    def spy(self, batch, batch_idx):
        conv = next(m for m in self.model.modules() if isinstance(m, torch.nn.Conv2d))
        kernels = {m.plain_kernels for m in self.model.modules() if hasattr(m, "plain_kernels")}
        seen.append((batch["image"].is_contiguous(memory_format=torch.channels_last),
                     conv.weight.is_contiguous(memory_format=torch.channels_last),
                     kernels <= {plain}))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationModule, "training_step", spy)
    only_stage2 = ["train_stages=[stage2]", "stages.stage2.init.encoder=null"] if plain else []
    config = tiny_config("precision=bf16-mixed", "stages.stage1.max_epochs=1",
                         "memory_format=channels_last", f"plain_kernels={str(plain).lower()}",
                         *only_stage2)
    result = train(config, data_root, tmp_path / "run")
    assert seen and all(all(flags) for flags in seen)
    for n in ("stage2",) if plain else ("stage1", "stage2"):
        metrics = result.best_metrics[n]
        assert 0.0 <= metrics["mdsc"] <= 1.0
        with (result.run_dir / n / "metrics.csv").open() as f:
            losses = [float(r["train_loss"]) for r in csv.DictReader(f)
                      if r.get("train_loss")]
        assert losses and all(torch.isfinite(torch.tensor(losses)))
    model = load_model(result.model_file)
    assert next(model.parameters()).dtype == torch.float32  # weights stay float32


@pytest.mark.parametrize(("override", "message"), [
    ("model.options.width=abc", "stages.stage2: model 'condseg' cannot be built from "
     "model.options (model 'condseg': option width='abc' is not valid (Input should be a valid "
     "integer"),
    ("model.options.encoder=resnet-nope", "stages.stage1: model 'condseg-net0' cannot be built "
     "from stages.stage1.model.options and model.options.encoder (Unknown model "
     "(resnet-nope))"),
    ("model.options.heads=3", "stages.stage2: model 'condseg' cannot be built from"),
    ("data.size=60", "stages.stage1: input size 60x60 does not suit condseg-net0"),
])
def test_every_stage_is_built_before_the_first_step(
    override: str, message: str, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model option, input size or loss of any stage that cannot work is refused before
    Lightning starts the first stage (the stage-2 network used to fail after stage 1)."""

    def refuse(*args, **kwargs):
        raise AssertionError("Lightning was started")

    monkeypatch.setattr(trainer_module.L, "Trainer", refuse)
    with pytest.raises(TrainingError) as refused:
        train(tiny_config(override), data_root, tmp_path / "run")
    assert str(refused.value).startswith(message), str(refused.value)
    assert not (tmp_path / "run").exists()
