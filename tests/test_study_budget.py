"""Equal-compute studies: a budget of FLOPs or of time made into each method's epochs, the
epoch arithmetic, the records (protocol.json, study.md, the comparison's columns) and (slow) a
study under a time budget that ends within it."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from condseg.cli import app
from condseg.data.synthetic import synthesize
from condseg.errors import StudyError
from condseg.study.budget import epochs_within
from condseg.study.protocol import MethodProtocol, read_protocols, resolve
from condseg.study.report import spent
from condseg.study.run import run_study
from condseg.study.spec import Budget, duration_seconds, read_study
from condseg.training.cost import flops_per_image, images_per_epoch
from condseg.training.plan import plan_stages, stage_parts

runner = CliRunner()
TINY_CONDSEG = {"name": "condseg", "overrides": [
    "model.options.encoder=resnet18", "model.options.width=16",
    "stages.stage1.max_epochs=100", "stages.stage2.max_epochs=200"]}
TINY_UNET = {"name": "unet", "overrides": [
    "model.options.encoder=resnet18", "model.options.decoder_channels=[32,16,16,8,8]"]}
# CHNet's multi-scale batches: 64 px runs draw 48 and 64 (its sizes vary per batch)
CHNET = {"name": "chnet", "overrides": []}
PROTOCOL = {"size": 64, "batch_size": 3, "pretrained": "none", "precision": 32}


def _spec(data: Path, **changes: object):
    return read_study(None, {"data": str(data), "protocol": PROTOCOL,
                             "overrides": ["data.num_workers=0", "progress_bar=false"],
                             **changes})


def test_epochs_fill_the_budget_in_the_recipes_proportions() -> None:
    # one stage: as many whole epochs as fit
    assert epochs_within(10.0, {"train": 300}, {"train": 3.0}) == {"train": 3}
    # two stages, recipe 1:2, stage 2 costs 4x an epoch of stage 1: exact shares 1.667, 3.333
    got = epochs_within(15.0, {"s1": 100, "s2": 200}, {"s1": 1.0, "s2": 4.0})
    assert got == {"s1": 2, "s2": 3}
    assert got["s1"] * 1.0 + got["s2"] * 4.0 <= 15.0
    # any further epoch of a stage still below its share would overspend
    assert 15.0 - (got["s1"] * 1.0 + got["s2"] * 4.0) < 4.0
    # a budget that buys the recipe exactly gives the recipe
    assert epochs_within(900.0, {"s1": 100, "s2": 200}, {"s1": 1.0, "s2": 4.0}) == {
        "s1": 100, "s2": 200}
    # one epoch each is the least; less is refused with the budget it takes
    assert epochs_within(5.0, {"s1": 100, "s2": 200}, {"s1": 1.0, "s2": 4.0}) == {
        "s1": 1, "s2": 1}
    with pytest.raises(StudyError, match=r"costs 5 FLOPs, more than the budget 4.9 FLOPs; "
                                         r"give at least 5 FLOPs"):
        epochs_within(4.9, {"s1": 100, "s2": 200}, {"s1": 1.0, "s2": 4.0}, " FLOPs")
    # a stage whose share is under one epoch gets one, taken back from the other's share
    assert epochs_within(150.0, {"a": 1, "b": 100}, {"a": 100.0, "b": 1.0}) == {"a": 1, "b": 50}
    assert epochs_within(105.0, {"a": 30, "b": 300}, {"a": 100.0, "b": 1.0}) == {"a": 1, "b": 5}
    for budget in (5.0, 15.0, 37.5, 150.0, 1000.0):  # never over, whatever the shares
        for recipe in ({"a": 1, "b": 100}, {"a": 50, "b": 50}, {"a": 300, "b": 1}):
            got = epochs_within(budget, recipe, {"a": 3.0, "b": 2.0})
            assert min(got.values()) >= 1 and 3 * got["a"] + 2 * got["b"] <= budget


def test_a_budget_is_one_rule_and_a_duration_is_read_once() -> None:
    assert [duration_seconds(t) for t in ("40m", "2h", "1h30m", "90s", "90")] == [
        2400, 7200, 5400, 90, 90]
    for bad in ("", "soon", "0s", "m"):
        with pytest.raises(ValueError, match="budget time"):
            duration_seconds(bad)
    with pytest.raises(ValueError, match="not both flops and time"):
        Budget(flops=1e15, time="1h")
    for bad in ("1h30", "2h5"):  # after a unit every part has its own
        with pytest.raises(ValueError, match="no duration"):
            duration_seconds(bad)
    with pytest.raises(ValueError, match="write it as text with its unit"):
        Budget(time=90)  # YAML reads `time: 1:30` as 90
    assert Budget(time="40m").seconds == 2400 and Budget(flops=2e15).compute == "flops"


def test_flops_budget_gives_each_stage_its_share_of_the_method(tmp_path: Path) -> None:
    data = synthesize(tmp_path / "data", n_train=7, n_val=2, size=64)
    spec = _spec(data, methods=[TINY_CONDSEG, CHNET], budget={"flops": 2e12})
    condseg, chnet = (resolve(spec, entry) for entry in spec.methods)
    cost = condseg.cost
    assert cost["kind"] == "flops" and cost["budget_tflop"] == 2.0
    stages = cost["stages"]
    assert [s["images_per_epoch"] for s in stages.values()] == [6, 6]  # 7 in full batches of 3
    config = condseg.config()
    for name, stage in stages.items():
        parts = stage_parts(plan_stages(config, [name])[name], config)
        assert stage["gflop_per_image"] * 1e9 == flops_per_image(parts, 64)
        assert stage["epochs"] == config.stages[name].max_epochs
    per_epoch = {n: s["tflop_per_epoch"] for n, s in stages.items()}
    assert epochs_within(2.0, {"stage1": 100, "stage2": 200}, per_epoch) == {
        n: s["epochs"] for n, s in stages.items()}
    assert cost["planned_tflop"] <= 2.0
    # stage 1 (two views of a light network) and stage 2 keep the recipe's 1:2 within an epoch
    assert abs(stages["stage2"]["epochs"] / stages["stage1"]["epochs"] - 2) < 0.5

    # multi-scale: the cost of an image is the mean over the sizes the hook draws
    config = chnet.config()
    parts = stage_parts(plan_stages(config, ["train"])["train"], config)
    sizes = parts.batch_hook.sizes
    assert len(sizes) > 1
    mean = sum(flops_per_image(replace(parts, batch_hook=None), s) for s in sizes) / len(sizes)
    train = chnet.cost["stages"]["train"]
    assert train["gflop_per_image"] * 1e9 == pytest.approx(mean, rel=1e-12)
    assert train["epochs"] == int(2e12 / (mean * 6))
    assert chnet.cost["planned_tflop"] * 1e12 <= 2e12


def test_images_per_epoch_follow_full_batches_and_limits(tmp_path: Path) -> None:
    data = synthesize(tmp_path / "data", n_train=4, n_val=2, size=64)
    spec = _spec(data, methods=[TINY_UNET], overrides=["stages.train.limit_train_batches=3"])
    config = resolve(spec, spec.methods[0]).config()
    assert images_per_epoch(config, "train", 2) == 2  # one batch smaller than batch_size
    assert images_per_epoch(config, "train", 10) == 9  # 3 full batches; the last 1 dropped
    assert images_per_epoch(config, "train", 100) == 9  # within limit_train_batches=3


def test_the_record_of_a_budget_survives_protocol_json(tmp_path: Path) -> None:
    data = synthesize(tmp_path / "data", n_train=4, n_val=2, size=64)
    spec = _spec(data, methods=[TINY_UNET], budget={"flops": 1e12})
    received = resolve(spec, spec.methods[0])
    again = MethodProtocol.from_json(json.loads(json.dumps(received.to_json())))
    assert again == received
    assert MethodProtocol.from_json({k: v for k, v in received.to_json().items()
                                     if k != "cost"}).cost is None  # a study of before
    damaged = received.to_json()
    damaged["cost"]["stages"]["train"].pop("epochs")
    (tmp_path / "protocol.json").write_text(json.dumps([damaged]))
    with pytest.raises(StudyError, match=r"protocol\.json is damaged"):
        read_protocols(tmp_path / "protocol.json", spec)


def test_cli_budget_forms_and_refusals(tmp_path: Path) -> None:
    data = synthesize(tmp_path / "data", n_train=4, n_val=2, size=64)
    base = ["study", "--data", str(data), "--methods", "unet", "--size", "64",
            "--pretrained", "none", "--out", str(tmp_path / "S"), "--dry-run"]
    result = runner.invoke(app, [*base, "--budget", "flops=1e12"])
    assert result.exit_code == 0, result.output
    assert "Compute budget: 1e+12 training FLOPs per run" in result.output
    for budget, message in (("flops=lots", "--budget flops takes a number, got 'lots'"),
                            ("time=soon", "budget time 'soon' is no duration"),
                            ("flops=1e3", "more than the budget 1000 FLOPs")):
        bad = runner.invoke(app, [*base, "--budget", budget])
        assert bad.exit_code == 2 and message in bad.output, bad.output
    slurm = runner.invoke(app, [*base, "--budget", "time=1m", "--launcher", "slurm"])
    assert slurm.exit_code == 2
    assert "a time budget is calibrated on the machine the runs train on" in slurm.output
    ddp = runner.invoke(app, [*base, "--budget", "flops=1e12", "devices=2"])
    assert ddp.exit_code == 2
    assert "counts one training process, and each run would train on 2 (DDP)" in ddp.output
    assert not (tmp_path / "S").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_study_under_a_time_budget_ends_within_it_and_records_what_each_got(
    tmp_path: Path,
) -> None:
    budget_s = 30.0
    data = synthesize(tmp_path / "data", n_train=12, n_val=4, size=64)
    study = yaml.safe_dump({"data": str(data), "methods": [TINY_CONDSEG, TINY_UNET],
                            "protocol": PROTOCOL, "budget": {"time": f"{budget_s:g}s"},
                            "overrides": ["data.num_workers=0", "progress_bar=false"]})
    (tmp_path / "study.yaml").write_text(study)
    started = time.monotonic()
    result = run_study(read_study(tmp_path / "study.yaml", {}), tmp_path / "S")
    wall = time.monotonic() - started
    assert not result.failed
    report = (tmp_path / "S" / "study.md").read_text()
    print(report[report.index("## Budget"):report.index("## Runs")])
    for run in result.runs:
        job = sum(a.wall_s for a in run.attempts())
        epochs = spent(run, next(p for p in result.protocols if p.name == run.method))
        print(f"{run.label}: epochs {epochs.seconds:.0f} s, job {job:.0f} s")
        # Tolerance (docs/usage.md): a run's epochs (training and validation) take between a
        # third of the budget and 1.5 x it; its job, with its start, dataset check, checkpoint
        # writes, final evaluation and export, at most 1.5 x the budget plus a minute.
        assert budget_s / 3 <= epochs.seconds <= 1.5 * budget_s, (run.label, epochs)
        assert job <= 1.5 * budget_s + 60, (run.label, job)
    received = {p.name: p.cost for p in result.protocols}
    for name, cost in received.items():
        assert cost["kind"] == "time" and cost["planned_seconds"] <= budget_s
        epochs = "+".join(str(s["epochs"]) for s in cost["stages"].values())
        assert f"| {name}/seed0 | {epochs} |" in report
    table = (tmp_path / "S" / "comparison" / "compare.md").read_text()
    assert table.splitlines()[0].startswith("| Method | epochs | TFLOP |")
    print(f"the study took {wall:.0f} s")


def test_what_a_run_spent_is_read_from_its_stages_logs(tmp_path: Path) -> None:
    from condseg.layout import StudyDir
    from condseg.study.runs import plan_runs

    spec = read_study(None, {"data": str(tmp_path), "methods": ["condseg"]})
    run = plan_runs(spec, StudyDir(tmp_path / "S"))[0]
    stage = {"gflop_per_image": 1.0, "images_per_epoch": 10, "tflop_per_epoch": 0.5,
             "epochs": 3}
    protocol = MethodProtocol("condseg", "condseg", [], [], {
        "kind": "flops", "planned_tflop": 3.0, "stages": {"stage1": stage, "stage2": stage}})
    assert spent(run, protocol) is None  # nothing trained yet
    log = run.run.stage("stage1").metrics
    log.parent.mkdir(parents=True)
    log.write_text("epoch,train_tflop,epoch_seconds\n1,0.25,2.0\n2,0.5,3.0\n")
    used = spent(run, protocol)  # stage 1 only: a run stopped in stage 2 counts what it spent
    assert (used.epochs, used.tflop, used.seconds) == ({"stage1": 2, "stage2": 0}, 0.75, 5.0)
    log.write_text("epoch,train_loss\n1,0.3\n2,0.2\n")  # an older log: epochs x cost per epoch
    used = spent(run, protocol)
    assert (used.tflop, used.seconds) == (1.0, None)


def test_a_run_trains_in_as_many_processes_as_its_job_has_gpus_unless_told() -> None:
    from condseg.config import load_config
    from condseg.study.budget import training_processes

    def config(*overrides: str):
        return load_config("default", ["method=unet", *overrides])

    assert training_processes(config(), 0) == 1  # no GPU: one process
    assert training_processes(config(), 4) == 4  # devices auto: Lightning takes them all
    assert training_processes(config("accelerator=cpu"), 4) == 1
    assert training_processes(config("devices=2", "num_nodes=2"), 0) == 4
