"""Every option checked before any work (issue 23, point 3), and a study's records telling the
truth (point 7): bounded numbers, every stage's optimiser and schedule built before the first
trains, a failed job's reason from wherever it wrote it, names that fit a file system and a
Markdown table, and a protocol.json that is what the study wrote."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from condseg.cli import app
from condseg.config import RunConfig, load_config
from condseg.data.synthetic import synthesize
from condseg.errors import ConfigError, CrossValidationError, StudyError, TrainingError
from condseg.evaluation.compare import compare
from condseg.evaluation.compare.tables import markdown_table
from condseg.layout import StudyDir
from condseg.models.registry import create_model
from condseg.recipes import list_methods
from condseg.study import protocol
from condseg.study.launch import last_error, launch
from condseg.study.protocol import resolve
from condseg.study.report import print_protocol, write_report
from condseg.study.run import run_study
from condseg.study.runs import plan_runs
from condseg.study.spec import Launcher, read_study
from condseg.training import train
from condseg.training.cv import cross_validate
from condseg.training.optim import configure
from condseg.training.plan import method_plans
from test_compare import write_evaluation

runner = CliRunner()
TINY = ["data.size=64", "data.batch_size=2", "data.num_workers=0", "model.options.width=16",
        "model.options.encoder=resnet18", "model.pretrained=false", "progress_bar=false"]


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return synthesize(tmp_path / "data", n_train=4, n_val=2, size=64)


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights are not fetched in these tests (what a study does without them is
    test_study's)."""
    monkeypatch.setattr(protocol, "fetch_weights", lambda config: None)


# --------------------------------------------------------------------------- bounded values


@pytest.mark.parametrize(("override", "named"), [
    ("seed=4294967295", "seed must be at most 4294967293"),  # + stage k: beyond 32 bits
    ("seed=-1", "seed"),
    ("stages.stage2.optimizer.betas=[2,3]", "stages.stage2.optimizer.betas.0"),
    ("stages.stage2.optimizer.lr=.inf", "stages.stage2.optimizer.lr: Input should be a finite"),
    ("stages.stage1.optimizer.encoder_lr=.nan", "stages.stage1.optimizer.encoder_lr"),
    ("stages.stage2.optimizer.weight_decay=-0.1", "stages.stage2.optimizer.weight_decay"),
    ("stages.stage2.optimizer.momentum=1.5", "stages.stage2.optimizer.momentum"),
    ("stages.stage2.limit_train_batches=0", "stages.stage2.limit_train_batches"),
    ("stages.stage2.limit_train_batches=1.5", "limit_train_batches: a share of the batches"),
    ("stages.stage1.limit_val_batches=0", "stages.stage1.limit_val_batches"),
    ("stages.stage2.max_epochs=0", "stages.stage2.max_epochs"),
    ("stages.stage2.max_epochs=100000000", "stages.stage2.max_epochs"),
    ("stages.stage1.early_stop_patience=-3", "stages.stage1.early_stop_patience"),
    ("stages.stage2.schedule.monitor=val/iou", "stages.stage2.schedule.monitor"),
    ("stages.stage2.schedule.factor=2", "stages.stage2.schedule.factor"),
    ("checkpoint_every_minutes=1e12", "checkpoint_every_minutes"),
    ("checkpoint_every_minutes=0", "checkpoint_every_minutes"),
    ("log_every_n_steps=0", "log_every_n_steps"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.num_workers=-1", "data.num_workers"),
    ("stages.stage2.augmentation.rotate=.inf", "stages.stage2.augmentation.rotate"),
    ("data.std=[0,0,0]", "data.std.0: Input should be greater than 0"),  # a divisor
    ("data.std=[0.2,-1,0.2]", "data.std.1"),
])
def test_every_numeric_option_is_bounded_in_one_line(override: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("default", [override])
    message = str(caught.value)
    assert named in message and "\n" not in message
    assert "{'" not in message  # the value, never a dump of the whole section


def test_a_warm_up_longer_than_its_stage_is_refused() -> None:
    for name in ("poly", "cosine", "constant"):
        with pytest.raises(ConfigError, match=r"stages\.stage2: schedule\.warmup_epochs \(5\) "
                                              r"must be fewer than max_epochs \(5\)"):
            load_config("default", [f"stages.stage2.schedule.name={name}",
                                    "stages.stage2.max_epochs=5",
                                    "stages.stage2.schedule.warmup_epochs=5"])
    # the plateau and triangular schedules have no warm-up to refuse
    load_config("default", ["stages.stage2.schedule.warmup_epochs=9",
                            "stages.stage2.max_epochs=5"])


# --------------------------------------------------------------------------- before stage 1


@pytest.mark.parametrize(("overrides", "message"), [
    (["stages.stage2.optimizer.name=sgd", "stages.stage2.optimizer.momentum=0",
      "stages.stage2.optimizer.nesterov=true"],
     r"stages\.stage2: optimizer sgd .* refuses its options \(Nesterov momentum requires"),
    (["stages.stage2.limit_train_batches=0.4"],
     r"stages\.stage2\.limit_train_batches is 0\.4, which of the 2 batch\(es\) of each "
     r"process is none"),
    (["stages.stage2.limit_val_batches=0.5"],
     r"stages\.stage2\.limit_val_batches is 0\.5, which of the 1 batch\(es\)"),
    (["model.options.width=15"], r"stages\.stage2: model 'condseg' cannot be built"),
])
def test_a_later_stage_that_cannot_train_is_refused_before_the_first_starts(
    tmp_path: Path, data: Path, overrides: list[str], message: str
) -> None:
    config = load_config("default", [*TINY, *overrides])
    with pytest.raises(TrainingError, match=message):
        train(config, data, tmp_path / "run", console=quiet())
    assert not (tmp_path / "run").exists()  # stage 1 never started


def test_the_stand_in_build_accepts_every_method_s_own_optimiser_and_schedule() -> None:
    """Building each stage's optimiser and schedule before training refuses nothing a
    method's recipe trains with (SGD with Nesterov, the triangular and poly schedules)."""
    built = []
    for method in list_methods():
        for plan in method_plans(method).values():
            with torch.device("meta"):
                network = create_model(plan.model, pretrained=False, **plan.options)
            built.append(type(configure(network, plan.cfg)["optimizer"]).__name__)
    assert {"Adam", "SGD"} <= set(built)


def test_seeds_and_numbers_of_the_command_line_are_refused_in_one_line(
    tmp_path: Path, data: Path, no_downloads: None
) -> None:
    cases = [
        (["train", "--data", str(data), "--seed", "4294967295"], "seed must be at most"),
        (["train", "--data", str(data), "--stage", "²"], "stage must be 'all'"),
        (["train", "--data", str(data), "--fold", "-1"], "has no fold [-1]; its folds are none"),
        (["cv", "--data", str(data), "--seeds", "0,4294967295"], "seed must be at most"),
        (["cv", "--data", str(data), "--seeds", "-1"], "seed: Input should be greater"),
        (["study", "--data", str(data), "--methods", "unet", "--budget", "epochs=²"],
         "--budget epochs takes a whole number, got '²'"),
        (["study", "--data", str(data), "--methods", "unet", "--budget", "flops=nan"],
         "budget.flops"),
        (["study", "--data", str(data), "--methods", "unet", "--budget", "flops=1e999"],
         "budget.flops"),
        (["study", "--data", str(data), "--methods", "unet", "--seeds", "-2"], "seeds.0"),
        (["study", "--data", str(data), "--methods", "unet", "--seeds", "4294967295"],
         "run unet/seed4294967295: invalid value — seed must be at most 4294967294"),
        (["study", "--data", str(data), "--methods", "unet", "--folds", "1000000"], "folds"),
        (["study", "--data", str(data), "--methods", "unet", "--budget", "epochs=10000000"],
         "budget.epochs"),
        (["study", "--data", str(data), "--methods", "unet", "--memory-gb", "inf"],
         "launcher.memory_gb"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        result = runner.invoke(app, [*args, "--out", str(out), *(
            ["--dry-run"] if args[0] == "study" else [])])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, (args,
                                                                                 result.output)
        assert not out.exists(), args


def test_the_numbers_of_the_data_commands_are_refused_in_one_line(
    tmp_path: Path, data: Path
) -> None:
    """The data commands' numbers: seeds outside 32 bits, a split fraction that is NaN or
    infinite, more folds than images (refused before the folds are built), a synthetic image
    side beyond memory. Nothing is written."""
    folder = ["data", "prepare", "folder", str(data / "images"), str(data / "masks")]
    cases = [
        ([*folder, "--seed", "-1"], "'--seed': Input should be greater than or equal to 0"),
        ([*folder, "--split", "0.5,nan"], "--split takes 2 or 3 positive fractions"),
        ([*folder, "--split", "inf,0.5"], "--split takes 2 or 3 positive fractions"),
        ([*folder, "--folds", "100000"], "6 usable pairs are too few for this split: "
                                         "folds/99999/val would be empty"),
        (["data", "synth", "--seed", "4294967296"], "less than or equal to 4294967295"),
        (["data", "synth", "--size", "100000"], "size (--size) must be an integer from 8 to"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        result = runner.invoke(app, [*args, str(out)] if args[1] == "synth" else
                               [*args[:5], str(out), *args[5:]])
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
        assert "Traceback" not in result.output and not out.exists(), args


def test_a_benchmark_file_that_cannot_be_written_is_refused_before_measuring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import condseg.bench

    def measured(*args: object, **kwargs: object) -> None:
        raise AssertionError("measured before its output was checked")

    monkeypatch.setattr(condseg.bench, "benchmark_models", measured)
    (tmp_path / "file").write_text("")
    for where, message in ((tmp_path, "is a folder; give a file name"),
                           (tmp_path / "file" / "b.json", "is not a writable folder")):
        result = runner.invoke(app, ["benchmark", "--model", "unet", "--json", str(where)])
        assert result.exit_code == 2 and message in result.output, result.output


def test_cross_validation_refuses_a_seed_or_fold_before_its_first_run(
    tmp_path: Path, data: Path
) -> None:
    config = load_config("default", [*TINY, "method=unet"])
    with pytest.raises(ConfigError, match="seed 4294967295: invalid value"):
        cross_validate(config, data, tmp_path / "cv", seeds=[0, 4294967295], console=quiet())
    with pytest.raises(CrossValidationError, match=r"has no fold \[-1\]"):
        cross_validate(config, data, tmp_path / "cv", folds=[-1], console=quiet())
    assert not (tmp_path / "cv").exists()


# --------------------------------------------------------------------------- study records


def test_a_failed_job_s_reason_is_taken_from_wherever_it_wrote_it(tmp_path: Path) -> None:
    out, err = tmp_path / "log.out", tmp_path / "log.err"
    out.write_text("error: an earlier attempt's failure\n")
    start = out.stat().st_size
    with out.open("a") as f:
        f.write("stage1 epoch 1/2: train loss 0.5\n"
                "error: dataset /d has 1 error(s), each listed by `condseg data check /d`; "
                "fix them\n")
    err.write_text("")
    assert last_error({out: start, err: 0}) == \
        "error: dataset /d has 1 error(s), each listed by `condseg data check /d`; fix them"
    assert last_error({out: out.stat().st_size, err: 0}) is None  # nothing new in this call
    err.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
                   "    seed_everything(seed)\nValueError: 4294967296 is not in bounds\n")
    assert last_error({out: out.stat().st_size, err: 0}) == \
        "Traceback: ValueError: 4294967296 is not in bounds"
    assert last_error({tmp_path / "missing.out": 0}) is None


def test_a_failed_job_s_line_gives_its_reason_and_its_logs(tmp_path: Path, data: Path) -> None:
    """A real local job whose training refuses its config: the study's line says why."""
    spec = read_study(None, {"data": str(data), "methods": ["unet"]})
    run = plan_runs(spec, StudyDir(tmp_path / "S"))[0]
    run.job.path.mkdir(parents=True)
    run.job.config.write_text("method: unet\nseed: -1\n")  # as no study writes it
    console = Console(record=True, file=io.StringIO(), width=500, soft_wrap=True)
    [outcome] = launch([run], Launcher(), data, console)
    text = console.export_text()
    assert not outcome.ok and outcome.attempt is not None
    assert "failed unet/seed0: exit status 2: error: " in text, text
    assert "seed: Input should be greater than or equal to 0 (got -1)" in text
    assert "_log.out, " in text and "_log.err)" in text  # both logs named


@pytest.mark.parametrize("length", [255, 256, 300])
def test_a_method_name_must_fit_a_file_name(tmp_path: Path, length: int) -> None:
    entry = {"name": "m" * length, "method": "unet"}
    if length <= 255:
        spec = read_study(None, {"data": str(tmp_path), "methods": [entry]})
        assert [r.method for r in plan_runs(spec, StudyDir(tmp_path / "S"))] == ["m" * length]
        return
    with pytest.raises(StudyError, match="at most 255"):
        read_study(None, {"data": str(tmp_path), "methods": [entry]})
    result = runner.invoke(app, ["study", "--data", str(tmp_path), "--methods", "m" * length,
                                 "--out", str(tmp_path / "S"), "--dry-run"])
    assert result.exit_code == 2 and not (tmp_path / "S").exists()


def test_an_empty_section_set_to_null_is_not_something_a_recipe_gave_up(
    no_downloads: None
) -> None:
    spec = read_study(None, {"data": "/d", "methods": [
        {"name": "m2snet", "overrides": ["stages.train.batch_hook=null",
                                          "stages.train.loss.options.lossnet=false"]}]})
    keys = [change.key for change in resolve(spec, spec.methods[0]).changes]
    assert "stages.train.batch_hook.name" in keys  # the hook itself was given up
    assert "stages.train.batch_hook.options" not in keys and "stages.train.batch_hook" not in keys


def test_the_console_shows_every_value_a_recipe_gave_up(no_downloads: None) -> None:
    """A value in brackets is printed, not taken for Rich markup."""
    spec = read_study(None, {"data": "/d", "methods": [
        {"name": "unet", "overrides": ["description='[draft] mine'"]}]})
    console = Console(record=True, file=io.StringIO(), width=300, soft_wrap=True)
    print_protocol(spec, [resolve(spec, spec.methods[0])], console)
    assert "-> [draft] mine (its own overrides)" in console.export_text()


def _study_folder(tmp_path: Path, data: Path) -> tuple[StudyDir, Path]:
    spec = read_study(None, {"data": str(data), "methods": ["unet"],
                             "protocol": {"size": 64}, "budget": {"epochs": 2}})
    study = StudyDir(tmp_path / "S")
    study.path.mkdir()
    study.spec.write_text(spec.to_yaml())
    study.protocol.write_text(json.dumps([resolve(spec, spec.methods[0]).to_json()]))
    return study, Path(study.spec)


def test_a_hand_edited_protocol_json_is_refused_in_one_line(
    tmp_path: Path, data: Path, no_downloads: None
) -> None:
    study, spec_file = _study_folder(tmp_path, data)
    spec = read_study(spec_file, {})
    run_study(spec, study.path, console=quiet(), dry_run=True)  # as written: accepted
    saved = json.loads(study.protocol.read_text())
    edits = {
        "overrides edited": [{**saved[0], "overrides": ["stages.train.max_epochs=2"]}],
        "changes edited": [{**saved[0], "changes": saved[0]["changes"][1:]}],
        "another method": [{**saved[0], "method": "m2snet"}],
    }
    for what, entries in edits.items():
        study.protocol.write_text(json.dumps(entries))
        with pytest.raises(StudyError, match=r"protocol\.json was edited: .* method unet"):
            run_study(spec, study.path, console=quiet(), dry_run=True)
        assert study.protocol.read_text() == json.dumps(entries), what  # nothing rewritten
    for text in ("{not json", json.dumps([{"name": "unet"}]), json.dumps({"a": 1})):
        study.protocol.write_text(text)
        with pytest.raises(StudyError, match=r"protocol\.json is damaged"):
            run_study(spec, study.path, console=quiet(), dry_run=True)


def test_names_cannot_break_the_markdown_tables(
    tmp_path: Path, data: Path, no_downloads: None
) -> None:
    weird = "odd | name\nwith a break\r\tand a bell \a"
    study, spec_file = _study_folder(tmp_path, data)
    spec = read_study(spec_file, {}).model_copy(update={"data": Path(f"/data/{weird}")})
    protocols = [resolve(spec, spec.methods[0])]
    runs = plan_runs(spec, study)
    runs[0].job.path.mkdir(parents=True)
    runs[0].job.attempts.write_text(json.dumps(
        {"started": "x", "wall_s": 1, "peak_rss_mb": 1, "exit_code": 1, "host": weird,
         "command": "condseg train"}) + "\n")
    report = write_report(study, spec, protocols, runs, None, 1.0).read_text()
    # every table row keeps its columns; the names are there, escaped
    for table in ("| method |", "| run |"):
        lines = report.split(table, 1)[1].splitlines()[2:]
        row = lines[0]
        assert row.replace("\\|", "").count("|") == 7, row
    assert r"odd \| name\nwith a break\r\tand a bell \x07" in report
    assert "- data: `/data/odd \\| name\\nwith a break" in report
    a = write_evaluation(tmp_path / "a", [0.8, 0.7, 0.9, 0.6, 0.5, 0.7, 0.8, 0.9], model="unet")
    b = write_evaluation(tmp_path / "b", [0.7, 0.7, 0.8, 0.6, 0.4, 0.7, 0.9, 0.9], model="unet")
    table = markdown_table(compare([a, b], labels=[weird, "plain|label"]))
    rows = table.splitlines()
    assert len(rows) == 4 and all(r.replace("\\|", "").count("|") == rows[0].count("|")
                                  for r in rows)


def test_a_study_run_s_config_is_validated_whole(tmp_path: Path, data: Path,
                                                 no_downloads: None) -> None:
    spec = read_study(None, {"data": str(data), "methods": ["condseg"],
                             "seeds": [4294967294]})  # a valid seed, but not for two stages
    with pytest.raises(ConfigError, match="run condseg/seed4294967294: invalid value — seed"):
        run_study(spec, tmp_path / "S", console=quiet(), dry_run=True)
    assert not (tmp_path / "S").exists()
    spec = read_study(None, {"data": str(data), "methods": ["unet"], "folds": 1})
    run = plan_runs(spec, StudyDir(tmp_path / "S"))[0]
    config = run.config(resolve(spec, spec.methods[0]), data)
    assert isinstance(config, RunConfig) and config.data.root == data
    assert (config.seed, config.data.train_split) == (0, "folds/0/train")
