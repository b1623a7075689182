"""condseg study: the study file, what every method receives, its runs, the SLURM submission,
and (slow) a whole study killed with SIGKILL and continued."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from condseg.cli import app
from condseg.config import RunConfig
from condseg.data.synthetic import synthesize
from condseg.errors import StudyError, WeightsUnavailableError
from condseg.layout import StudyDir
from condseg.study import protocol
from condseg.study.job import RunJob, Watched
from condseg.study.launch import make_executor
from condseg.study.protocol import Change, budget_overrides, resolve
from condseg.study.run import run_study
from condseg.study.runs import plan_runs
from condseg.study.spec import Budget, read_study

runner = CliRunner()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[RunConfig]:
    """Weights as on a machine without network: every ImageNet encoder and LossNet's VGG are
    missing (the errors training would raise, with the settings that avoid them)."""
    checked: list[RunConfig] = []

    def fetch(config: RunConfig) -> None:
        checked.append(config)
        if config.model.pretrained:
            raise WeightsUnavailableError("no encoder weights", what="encoder weights",
                                          without="model.pretrained=false")
        for name, stage in config.stages.items():
            if stage.loss.options.get("lossnet"):
                raise WeightsUnavailableError(
                    "no VGG", what="LossNet's VGG",
                    without=f"stages.{name}.loss.options.lossnet=false")

    monkeypatch.setattr(protocol, "fetch_weights", fetch)
    return checked


def _spec(tmp_path: Path, **changes: object):
    return read_study(None, {"data": str(tmp_path), "methods": ["condseg", "m2snet"], **changes})


def test_every_method_receives_the_protocol_budget_and_overrides_in_order(
    tmp_path: Path, offline: list[RunConfig]
) -> None:
    spec = _spec(tmp_path, protocol={"size": 128, "batch_size": 6, "precision": 32},
                 budget={"total_epochs": 5}, overrides=["data.num_workers=0"],
                 methods=["condseg", {"name": "m2snet", "overrides": ["seed=3",
                                                                      "data.size=160"]}])
    condseg, m2snet = (resolve(spec, entry) for entry in spec.methods)
    assert condseg.overrides == [
        "data.size=128", "data.batch_size=6", "precision=32",
        "stages.stage1.max_epochs=3", "stages.stage2.max_epochs=2",  # 5 shared as 300:300
        "data.num_workers=0", "model.pretrained=false"]
    config = condseg.config()
    assert (config.data.size, config.data.batch_size, config.precision) == (128, 6, "32")
    assert (config.stages["stage1"].max_epochs, config.stages["stage2"].max_epochs) == (3, 2)
    assert config.stages["stage2"].optimizer.encoder_lr == 1e-5  # its own recipe is kept
    assert condseg.changes == [
        Change("data.batch_size", 4, 6, protocol.PROTOCOL),
        Change("data.size", 256, 128, protocol.PROTOCOL),
        Change("model.pretrained", True, False, "encoder weights unavailable here"),
        Change("precision", "auto", "32", protocol.PROTOCOL),
        Change("stages.stage1.max_epochs", 300, 3, protocol.BUDGET),
        Change("stages.stage2.max_epochs", 300, 2, protocol.BUDGET)]
    m2 = m2snet.config()
    assert m2.data.size == 160  # its own overrides come after the protocol
    assert m2.stages["train"].max_epochs == 5
    assert m2.stages["train"].optimizer.name == "sgd"
    assert m2.stages["train"].loss.options["lossnet"] is False
    reasons = {c.key: c.reason for c in m2snet.changes}
    assert reasons["data.size"] == protocol.OWN
    assert reasons["stages.train.loss.options.lossnet"] == "LossNet's VGG unavailable here"
    assert "seed" not in reasons and "data.num_workers" not in reasons  # not the recipe's


def test_imagenet_requires_the_weights_and_none_trains_every_encoder_from_scratch(
    tmp_path: Path, offline: list[RunConfig]
) -> None:
    spec = _spec(tmp_path, protocol={"pretrained": "imagenet"})
    with pytest.raises(StudyError, match=r"method condseg: no encoder weights .*pretrained: auto"):
        resolve(spec, spec.methods[0])
    spec = _spec(tmp_path, protocol={"pretrained": "none"})
    received = resolve(spec, spec.methods[1])
    assert received.overrides[0] == "model.pretrained=false"
    assert {c.key: c.reason for c in received.changes}["model.pretrained"] == protocol.PROTOCOL


def test_budget_rules() -> None:
    config = protocol.run_config(None, [], method="condseg")
    assert budget_overrides(Budget(), config) == []
    assert budget_overrides(Budget(epochs=7), config) == [
        "stages.stage1.max_epochs=7", "stages.stage2.max_epochs=7"]
    assert protocol._shares(3, {"a": 1, "b": 1, "c": 1000}) == {"a": 1, "b": 1, "c": 1}
    assert protocol._shares(10, {"a": 300, "b": 300}) == {"a": 5, "b": 5}
    with pytest.raises(StudyError, match=r"total_epochs \(1\) is fewer than the 2 stages"):
        budget_overrides(Budget(total_epochs=1), config)
    with pytest.raises(ValueError, match="not both"):
        Budget(epochs=1, total_epochs=2)


@pytest.mark.parametrize(("changes", "message"), [
    ({"methods": ["condseg", "unett"]}, "'unett' is not a method \\(did you mean 'unet'\\?\\)"),
    ({"methods": ["unet", "unet"]}, "methods \\['unet'\\] appear twice"),
    ({"seeds": [1, 1]}, "seeds repeat"),
    ({"protocol": {"sise": 64}}, "unknown config key 'protocol.sise' \\(did you mean "
                                  "'protocol.size'\\?\\)"),
    ({"methods": [{"name": "a/b", "method": "unet"}]}, "a method's name is a folder name"),
])
def test_a_bad_study_is_one_line_naming_the_value(
    tmp_path: Path, changes: dict, message: str
) -> None:
    with pytest.raises(StudyError, match=message) as error:
        _spec(tmp_path, **changes)
    assert "\n" not in str(error.value)


def test_a_study_file_names_data_relative_to_itself_and_options_replace_its_values(
    tmp_path: Path
) -> None:
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "data": "kvasir", "methods": ["unet"], "protocol": {"size": 64, "batch_size": 2}}))
    spec = read_study(tmp_path / "s.yaml", {"protocol": {"size": 96}, "seeds": [0, 1]})
    assert spec.data == (tmp_path / "kvasir").resolve()
    assert (spec.protocol.size, spec.protocol.batch_size, spec.seeds) == (96, 2, [0, 1])
    preset = read_study("condseg-table1", {"data": str(tmp_path)})
    assert preset.methods[0].name == "condseg" and preset.protocol.pretrained == "imagenet"
    with pytest.raises(StudyError, match="no study file or study preset named 'nope'"):
        read_study("nope", {})


def test_runs_are_named_by_seed_fold_or_both(tmp_path: Path) -> None:
    study = StudyDir(tmp_path / "S")

    def names(**changes: object) -> list[str]:
        return [r.label for r in plan_runs(_spec(tmp_path, methods=["unet"], **changes), study)]

    assert names() == ["unet/seed0"]
    assert names(seeds=[3, 4]) == ["unet/seed3", "unet/seed4"]
    assert names(folds=2) == ["unet/fold0", "unet/fold1"]
    assert names(folds=2, seeds=[1]) == ["unet/fold0-seed1", "unet/fold1-seed1"]
    run = plan_runs(_spec(tmp_path, methods=["unet"], folds=2), study)[1]
    assert run.run.path == tmp_path / "S" / "runs" / "unet" / "fold1"


def test_a_job_starts_its_run_or_continues_it_and_watches_its_study(tmp_path: Path) -> None:
    job = RunJob(str(tmp_path / "run"), str(tmp_path / "job"), str(tmp_path / "data"))
    assert job.argv() == ["train", "--config", str(tmp_path / "job" / "config.yaml"), "--data",
                          str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("method: unet\n")
    assert job.argv() == ["train", "--resume", str(tmp_path / "run")]
    me = Watched.this_process()
    assert me is not None and me.is_alive()
    assert not Watched(me.pid, str(int(me.started) + 1)).is_alive()  # a reused id is not it
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    assert not Watched(int(ended.stdout), me.started).is_alive()


def test_slurm_jobs_ask_for_what_the_study_says(tmp_path: Path) -> None:
    """The SLURM path through submitit's own mocked cluster: the sbatch file of a run."""
    pytest.importorskip("submitit.slurm.test_slurm")
    from submitit.slurm.test_slurm import mocked_slurm

    spec = _spec(tmp_path, methods=["unet"], launcher={
        "name": "slurm", "slurm": {"partition": "gpu", "gpus_per_node": 2, "cpus_per_task": 6,
                                   "mem_gb": 40, "timeout_min": 90,
                                   "additional": {"account": "lab"}}})
    run = plan_runs(spec, StudyDir(tmp_path / "S"))[0]
    with mocked_slurm():
        executor = make_executor(spec.launcher, run)
        job = executor.submit(RunJob(str(run.run.path), str(run.job.path), str(tmp_path)))
        sbatch = job.paths.submission_file.read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --mem=40960MB", "#SBATCH --time=90",
                 "#SBATCH --account=lab", "#SBATCH --job-name=condseg-unet-seed0"):
        assert line in sbatch
    assert str(run.job.launcher) in sbatch  # logs under the study folder


def test_cli_dry_run_shows_what_every_method_receives(
    tmp_path: Path, offline: list[RunConfig]
) -> None:
    data = synthesize(tmp_path / "data", n_train=4, n_val=2, size=64)
    result = runner.invoke(app, ["study", "--data", str(data), "--methods", "unet,m2snet",
                                 "--seeds", "0,1", "--budget", "epochs=2", "--size", "64",
                                 "--out", str(tmp_path / "S"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "not as its recipe: m2snet: data.size: 352 -> 64 (the study's protocol)" in \
        result.output
    assert "unet/seed1" in result.output and "nothing started" in result.output
    assert not (tmp_path / "S").exists()
    for options, message in ((["--budget", "steps=3"], "--budget takes epochs=N"),
                             (["--config", "a.yaml", "--preset", "b"], "not both")):
        bad = runner.invoke(app, ["study", "--data", str(data), "--methods", "unet", *options])
        assert bad.exit_code == 2 and message in bad.output


def test_a_study_folder_is_continued_only_as_the_same_experiment(
    tmp_path: Path, offline: list[RunConfig]
) -> None:
    data = synthesize(tmp_path / "data", n_train=4, n_val=2, size=64)
    out = StudyDir(tmp_path / "S")
    out.path.mkdir()
    (out.path / "mine.txt").write_text("x")
    with pytest.raises(StudyError, match="not empty and holds no study"):
        run_study(_spec(data, methods=["unet"]), out.path, dry_run=True)
    (out.path / "mine.txt").unlink()
    out.spec.write_text(_spec(data, methods=["unet"], budget={"epochs": 2}).to_yaml())
    with pytest.raises(StudyError, match=r"holds a study with other budget\.epochs"):
        run_study(_spec(data, methods=["unet"], budget={"epochs": 3}), out.path, dry_run=True)
    with pytest.raises(StudyError, match=r"method unet of .* was run as"):
        run_study(_spec(data, methods=[{"name": "unet", "overrides": ["seed=1"]}],
                        budget={"epochs": 2}), out.path, dry_run=True)
    more = run_study(_spec(data, methods=["chnet"], seeds=[1], budget={"epochs": 2}),
                     out.path, dry_run=True)  # methods and seeds are added to those it has
    assert [r.label for r in more.runs] == ["unet/seed0", "unet/seed1", "chnet/seed0",
                                            "chnet/seed1"]


@pytest.mark.parametrize(("changes", "message"), [
    ({"folds": 3}, r"has no fold \[0, 1, 2\] \(its folds: none\)"),
    ({"protocol": {"size": 100}}, r"method unet: .*100"),
    ({"launcher": {"name": "slurm"}}, "needs SLURM's sbatch"),
])
def test_a_study_that_cannot_run_is_refused_before_any_run(
    tmp_path: Path, offline: list[RunConfig], monkeypatch: pytest.MonkeyPatch, changes: dict,
    message: str
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    data = synthesize(tmp_path / "data", n_train=4, n_val=2, size=64)
    with pytest.raises(StudyError, match=message):
        run_study(_spec(data, methods=["unet"], **changes), tmp_path / "S", dry_run=True)
    assert not (tmp_path / "S").exists()


# --------------------------------------------------------------------------- a whole study

TINY = {
    "methods": [
        {"name": "condseg", "overrides": [
            "model.options.encoder=resnet18", "model.options.width=16",
            "stages.stage1.limit_train_batches=1", "stages.stage2.limit_train_batches=1"]},
        {"name": "unet", "overrides": [
            "model.options.encoder=resnet18", "model.options.decoder_channels=[32,16,16,8,8]",
            "stages.train.limit_train_batches=1"]}],
    "seeds": [0, 1],
    "protocol": {"size": 64, "batch_size": 3, "pretrained": "none", "precision": 32},
    "budget": {"epochs": 1},
    "overrides": ["data.num_workers=0", "progress_bar=false"],
    "launcher": {"jobs": 2},
}


def _study_processes(pid: int) -> list[int]:
    """Processes whose command line names the study folder (its jobs and their training)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != pid:
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"study-under-test" in command:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_study_killed_with_sigkill_is_continued_to_its_comparison(tmp_path: Path) -> None:
    data = synthesize(tmp_path / "data", n_train=6, n_val=3, size=64)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"data": str(data), **TINY}))
    out = tmp_path / "study-under-test"
    command = [sys.executable, "-m", "condseg", "study", "--config",
               str(tmp_path / "study.yaml"), "--out", str(out)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:  # killed once a run has finished its first stage: mid-way, with a run to continue
        deadline = time.monotonic() + 600
        while not any((out / "runs").glob("*/*/stage1/result.json")):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        time.sleep(3)  # the jobs notice within a second that their study is gone
        assert _study_processes(os.getpid()) == []  # nothing of the study runs on
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    continued = subprocess.run([sys.executable, "-m", "condseg", "study", "--out", str(out)],
                               capture_output=True, text=True, timeout=600,
                               start_new_session=True)
    assert continued.returncode == 0, continued.stdout[-3000:] + continued.stderr[-3000:]
    assert "continued" in continued.stdout  # the interrupted run went on from its stage 1
    with (out / "comparison" / "compare.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["runs"]) for r in rows] == [("condseg", "2"), ("unet", "2")]
    report = (out / "study.md").read_text()
    assert "| condseg/seed1 | finished |" in report and "| unet/seed1 | finished |" in report
    assert "`model.pretrained: true -> false (the study's protocol)`" in report
    received = json.loads((out / "protocol.json").read_text())
    assert [p["name"] for p in received] == ["condseg", "unet"]


def test_the_epoch_lines_of_running_jobs_are_passed_on_once_and_whole(tmp_path: Path) -> None:
    from rich.console import Console

    from condseg.study.launch import EpochLines

    console = Console(record=True, width=200)
    run = plan_runs(_spec(tmp_path, methods=["unet"]), StudyDir(tmp_path / "S"))[0]
    log = tmp_path / "job.log"
    log.write_text("submitit INFO starting\ntrain epoch 1/4: train loss 0.5 (ETA 0:01:00)\n"
                   "train epoch 2/4: tra")
    lines = EpochLines(console)
    lines.show(run, log)
    with log.open("a") as f:
        f.write("in loss 0.4\nnoise\n")
    lines.show(run, log)
    lines.show(run, tmp_path / "missing.log")
    assert console.export_text().splitlines() == [
        "unet/seed0: train epoch 1/4: train loss 0.5 (ETA 0:01:00)",
        "unet/seed0: train epoch 2/4: train loss 0.4"]


def test_a_job_warned_of_its_time_limit_stops_its_training_records_it_and_is_requeued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SLURM requeue path without SLURM: checkpoint() while the training runs."""
    from datetime import datetime, timezone

    from submitit.helpers import DelayedSubmission

    from condseg.study import job as job_module

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "77")
    (tmp_path / "job").mkdir()
    task = RunJob(str(tmp_path / "run"), str(tmp_path / "job"), str(tmp_path))
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(job_module, "_attempt", job_module._Attempt(
        process, ["train", "--resume", "RUN"], datetime.now(timezone.utc), time.monotonic()))
    again = task.checkpoint()
    assert isinstance(again, DelayedSubmission) and again.function is task
    assert process.returncode == -signal.SIGTERM
    record = json.loads((tmp_path / "job" / "attempts.jsonl").read_text())
    assert (record["exit_code"], record["job_id"], record["command"]) == (
        -signal.SIGTERM, "77", "condseg train --resume RUN")
    assert job_module._attempt is None  # recorded once
