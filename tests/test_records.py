"""Issue 24, point 8: each record of a run read and written in one place (condseg.records; a
stage's metrics.csv in condseg.epoch_log), with one rule for a missing value (condseg.tables).

Round trips of every format, byte for byte what condseg wrote before (the former writers are
spelled out here as they were), the two readers of an evaluation folder (evaluate's and
compare's) agreeing on old files, damage as one line naming the file, and a check over the
source (ast) that no other module opens these files itself.
"""

from __future__ import annotations

import ast
import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from condseg.config import ConfigError, load_config
from condseg.epoch_log import read_epochs, write_epoch_log
from condseg.errors import CompareError, DataError
from condseg.evaluation.compare.inputs import read_evaluation as compare_reads
from condseg.evaluation.compare.inputs import read_run
from condseg.evaluation.evaluate import EvaluationResult, read_results, write_results
from condseg.evaluation.metrics import METRIC_NAMES
from condseg.layout import CVDir, EvalDir, RunDir, StageDir
from condseg.records import (
    read_config,
    read_config_record,
    read_cv_summary,
    read_evaluation,
    read_result,
    write_config,
    write_cv_runs,
    write_cv_summary,
    write_evaluation,
    write_result,
)
from condseg.tables import read_cell, read_table, table_text
from condseg.training.results import StageResult

SRC = Path(__file__).resolve().parents[1] / "src" / "condseg"

ROWS = [
    {"name": "a", **{m: 0.5 for m in METRIC_NAMES}, "empty_prediction": False},
    {"name": "b", **{m: 0.25 for m in METRIC_NAMES}, "hd95": None, "assd": None},
    {"name": "café 1", **{m: 1.0 for m in METRIC_NAMES}, "dice": 1 / 3},
]
SUMMARY = {m: {"mean": 0.5, "std": 0.1, "n": 3, "missing": 0} for m in METRIC_NAMES}
SUMMARY["hd95"] = {"mean": None, "std": None, "n": 0, "missing": 3}
PROTOCOL = {"model": "unet", "split": "val", "resolution": "network", "input_size": [64, 64]}


def _one_line(text: str) -> str:
    assert "\n" not in text.strip()
    return text


def _former_evaluation_writer(folder: Path, rows: list[dict]) -> None:
    """evaluate.write_results as it was before records.py (per_image.csv by csv.DictWriter
    on a file opened with newline="", summary.json indented with a final newline)."""
    folder.mkdir(parents=True)
    with (folder / "per_image.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", *METRIC_NAMES], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = {"protocol": PROTOCOL, "metrics": SUMMARY}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


# --- round trips, byte for byte as before ---------------------------------------------------


def test_an_evaluation_is_written_as_before_and_read_back_whole(tmp_path: Path) -> None:
    _former_evaluation_writer(tmp_path / "before", ROWS)
    folder = EvalDir(tmp_path / "now")
    write_evaluation(folder, METRIC_NAMES, ROWS, SUMMARY, PROTOCOL)
    for name in ("per_image.csv", "summary.json"):
        assert (folder.path / name).read_bytes() == (tmp_path / "before" / name).read_bytes()
    record = read_evaluation(folder, DataError, "todo")
    assert record.metrics == SUMMARY and record.protocol == PROTOCOL
    expected = [{k: v for k, v in row.items() if k != "empty_prediction"} for row in ROWS]
    assert record.rows == expected  # None stays None, floats exact, names as written
    assert record.scores()["b"]["hd95"] is None and record.scores()["café 1"]["dice"] == 1 / 3


def test_evaluate_and_compare_read_an_old_evaluation_folder_alike(tmp_path: Path) -> None:
    """Before, evaluate read a `nan` cell as NaN and a word as damage while compare read both
    as missing; now both readers are the one reader."""
    _former_evaluation_writer(tmp_path / "e", ROWS)
    evaluated = read_results(tmp_path / "e")
    compared = compare_reads(tmp_path / "e")
    assert {r["name"]: {k: v for k, v in r.items() if k != "name"} for r in evaluated.rows} \
        == compared.per_image
    assert evaluated.summary == compared.metrics and evaluated.protocol == compared.protocol
    path = tmp_path / "e" / "per_image.csv"
    path.write_text(path.read_text().replace("0.25", "nan", 1))
    assert read_results(tmp_path / "e").rows[1]["iou"] is None
    assert compare_reads(tmp_path / "e").per_image["b"]["iou"] is None


def test_write_results_writes_one_column_per_metric_and_refuses_to_overwrite(
    tmp_path: Path
) -> None:
    result = EvaluationResult(rows=ROWS, summary=SUMMARY, protocol=PROTOCOL)
    write_results(result, tmp_path)
    assert read_results(tmp_path).rows[0] == {"name": "a", **{m: 0.5 for m in METRIC_NAMES}}
    with pytest.raises(FileExistsError):
        write_results(result, tmp_path)


def test_columns_are_read_as_the_header_names_them(tmp_path: Path) -> None:
    """A later column (per class, say) is read without a reader that lists metrics."""
    folder = EvalDir(tmp_path)
    write_evaluation(folder, ["dice", "dice/polyp"], [{"name": "a", "dice": 0.5,
                                                       "dice/polyp": None}], {}, {})
    assert read_evaluation(folder, DataError, "").scores() == {"a": {"dice": 0.5,
                                                                     "dice/polyp": None}}


def test_a_result_json_is_written_as_before_and_read_back(tmp_path: Path) -> None:
    stage = StageDir(tmp_path / "run" / "stage1")
    stage.path.mkdir(parents=True)
    result = StageResult("stage1/model.safetensors", "stage1/checkpoints/best.ckpt", 3, False,
                         {"val/miou": 0.5}, {"name": "none"})
    result.write(stage)
    record = {"model_file": result.model_file, "best_checkpoint": result.best_checkpoint,
              "max_epochs": 3, "stopped_early": False, "batch_hook": {"name": "none"},
              "metrics": {"val/miou": 0.5}}
    assert stage.result.read_text() == json.dumps(record, indent=2)  # the former writer
    assert StageResult.read(stage) == result
    assert read_result(stage, DataError, "") == record
    write_result(stage, {"model_file": "x"})  # an older result: keys the writer did not have
    assert read_result(stage, DataError, "") == {"model_file": "x"}


def test_a_config_yaml_is_written_as_before_and_read_back(tmp_path: Path) -> None:
    config = load_config("default", ["seed=3"])
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    write_config(run, config)
    assert run.config.read_text() == config.to_yaml()  # the former writer
    assert read_config(run) == config
    assert read_config_record(run, CompareError, "")["seed"] == 3
    assert read_run(run.path).config == yaml.safe_load(config.to_yaml())


def test_a_cv_summary_is_written_as_before_and_read_back(tmp_path: Path) -> None:
    cv = CVDir(tmp_path)
    record = {"runs": [{"name": "fold0"}], "metrics": SUMMARY, "ensemble": "ensemble.safetensors"}
    write_cv_summary(cv, record)
    assert cv.summary.read_text() == json.dumps(record, indent=2) + "\n"
    assert read_cv_summary(cv, DataError, "") == SUMMARY


def test_a_cv_runs_table_is_written_as_before(tmp_path: Path) -> None:
    columns = ["run", "fold", "seed", *METRIC_NAMES]
    rows = [{"run": "seed0", "fold": None, "seed": 0, **{m: 0.5 for m in METRIC_NAMES},
             "hd95": None}]
    with (tmp_path / "before.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    assert write_cv_runs(CVDir(tmp_path), columns, rows).read_bytes() == (
        tmp_path / "before.csv").read_bytes()


def test_a_metrics_csv_is_written_as_before_and_read_back(tmp_path: Path) -> None:
    log = StageDir(tmp_path).csv_logs / "version_0" / "metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text("epoch,step,train/loss_epoch,val/loss,val/miou,val/mdsc\n"
                   "0,9,0.75,,,\n0,9,,0.5,0.25,0.5\n1,19,0.5,,,\n")
    path = write_epoch_log(tmp_path)
    assert path == StageDir(tmp_path).metrics
    assert path.read_bytes() == (b"epoch,train_loss,val_mask_loss,val_miou,val_mdsc\r\n"
                                 b"1,0.75,0.5,25.0,50.0\r\n2,0.5,,,\r\n")
    assert read_epochs(path) == {1: {"train_loss": 0.75, "val_mask_loss": 0.5, "val_miou": 25.0,
                                     "val_mdsc": 50.0}, 2: {"train_loss": 0.5}}


# --- the missing-value rule -----------------------------------------------------------------


@pytest.mark.parametrize(("cell", "value"), [
    ("", None), ("  ", None), ("nan", None), ("NaN", None), ("inf", None), ("-inf", None),
    ("0", 0.0), ("0.25", 0.25), ("1e-3", 0.001),
])
def test_a_cell_reads_by_the_one_rule(cell: str, value: float | None) -> None:
    assert read_cell(cell) == value


def test_a_missing_value_is_written_as_an_empty_cell() -> None:
    text = table_text(["name", "a", "b", "c"], [{"name": "x", "a": None, "b": math.nan,
                                                 "c": math.inf, "extra": 1}])
    assert text == "name,a,b,c\r\nx,,,\r\n"


@pytest.mark.parametrize(("content", "why"), [
    (b"name,dice\na,half\n", "could not convert string to float"),
    (b"name,dice\na,0.5,0.7\n", "line 2 has not one cell per column"),
    (b"name,dice\na\n", "line 2 has not one cell per column"),
    (b"dice\n0.5\n", "no 'name' column"),
    (b"name,dice\nna\xefve,0.5\n", "not UTF-8 text"),
])
def test_a_damaged_table_is_one_line_naming_it(content: bytes, why: str, tmp_path: Path) -> None:
    path = tmp_path / "per_image.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        read_table(path, "name", DataError, "do this")
    line = _one_line(str(error.value))
    assert line.startswith(f"{path} is damaged") and why in line and line.endswith("; do this")


# --- damaged records: one line naming the file ----------------------------------------------


def _damaged_config(root: Path) -> Path:
    run = RunDir(root / "run")
    run.path.mkdir(parents=True)
    run.config.write_text("method: [unclosed\n  key: value\n")
    read_run(run.path)
    return run.config


def _damaged_summary(root: Path) -> Path:
    _former_evaluation_writer(root / "e", ROWS)
    (root / "e" / "summary.json").write_text("[1, 2]")
    compare_reads(root / "e")
    return root / "e" / "summary.json"


def _damaged_result(root: Path) -> Path:
    stage = StageDir(root / "run" / "stage1")
    stage.path.mkdir(parents=True)
    stage.result.write_bytes(b'{"model_file": "caf\xe9"}')
    read_result(stage, CompareError, "do this")
    return stage.result


def _damaged_per_image(root: Path) -> Path:
    _former_evaluation_writer(root / "e", ROWS)
    path = root / "e" / "per_image.csv"
    path.write_text(path.read_text().replace("0.25", "a quarter", 1))
    compare_reads(root / "e")
    return path


@pytest.mark.parametrize("damage", [_damaged_config, _damaged_summary, _damaged_result,
                                    _damaged_per_image])
def test_each_damaged_record_is_one_line_naming_it(damage, tmp_path: Path) -> None:
    with pytest.raises(CompareError) as error:
        damage(tmp_path)
    named = sorted(p for p in tmp_path.rglob("*") if p.is_file() and
                   p.name in ("config.yaml", "summary.json", "result.json", "per_image.csv"))
    assert any(_one_line(str(error.value)).startswith(f"{p} is damaged") for p in named)


def test_a_damaged_metrics_csv_is_one_line_naming_it(tmp_path: Path) -> None:
    path = StageDir(tmp_path).metrics
    path.write_text("epoch,train_loss\n1,lots\n")
    with pytest.raises(ValueError) as error:
        read_epochs(path)
    assert _one_line(str(error.value)).startswith(f"{path} is damaged")


def test_a_config_yaml_that_is_not_a_run_config_is_one_line(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.config.write_text("- a list\n")
    with pytest.raises(CompareError, match="is damaged: it is not a mapping"):
        read_config_record(run, CompareError, "")
    with pytest.raises(ConfigError):
        read_config(run)


# --- the rule holds: nothing else opens these files -----------------------------------------

NAMES = ("config.yaml", "result.json", "summary.json", "per_image.csv", "metrics.csv",
         "cv_summary.json", "cv_runs.csv")
#: The layout's properties that name them (CVDir.summary: cv_summary.json).
PROPERTIES = {"config", "result", "summary", "per_image", "metrics", "runs_table"}
OPENERS = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "read_json",
           "atomic_file", "load_config", "loads", "load", "safe_load", "DictReader",
           "DictWriter", "reader", "writer"}
#: Where the files are named (layout) and read and written (records; epoch_log for
#: metrics.csv, which also reads Lightning's own metrics.csv).
OWNERS = {"layout.py", "records.py", "epoch_log.py"}


def opened_records(tree: ast.AST) -> list[str]:
    """Where a module spells one of the names as a path (a string that is the name or ends
    with ``/name``) or hands a layout property naming one (or a variable it was assigned to)
    to something that opens or parses a file: as its argument, or as the object whose method
    it calls."""
    aliases = {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
               for target, value in _pairs(node)
               if isinstance(target, ast.Name) and isinstance(value, ast.Attribute)
               and value.attr in PROPERTIES}

    def _is_property(node: ast.AST | None) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr in PROPERTIES) or (
            isinstance(node, ast.Name) and node.id in aliases)

    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings \
                and any(node.value == n or node.value.endswith(f"/{n}") for n in NAMES):
            found.append(f"line {node.lineno}: {node.value!r}")
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name not in OPENERS:
                continue
            receiver = func.value if isinstance(func, ast.Attribute) else None
            if _is_property(receiver) or any(_is_property(a) for a in node.args):
                found.append(f"line {node.lineno}: {ast.unparse(node)[:60]}")
    return found


def _pairs(node: ast.Assign) -> list[tuple[ast.AST, ast.AST]]:
    """(target, value) of ``x = v`` and ``x, y = v, w``."""
    pairs = []
    for target in node.targets:
        if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
            pairs += zip(target.elts, node.value.elts, strict=False)
        else:
            pairs.append((target, node.value))
    return pairs


def test_the_check_finds_a_module_opening_a_record_itself() -> None:
    for source in ('json.loads(stage.result.read_text())', 'read_json(folder.summary, dict)',
                   'open(run / "config.yaml")', 'csv.DictReader(folder.per_image.open())',
                   'p.glob("*/metrics.csv")', 'write_text(cv.config, text)',
                   'a, b = f.summary, f.per_image\nb.open()', 'path = run.config\nread_text(path)'):
        assert opened_records(ast.parse(source)), source
    assert not opened_records(ast.parse('"""Reads summary.json."""\nrun.config.is_file()'))


def test_no_other_module_opens_a_record_itself() -> None:
    found = {str(path.relative_to(SRC)): hits for path in sorted(SRC.rglob("*.py"))
             if path.name not in OWNERS or path.parent != SRC
             if (hits := opened_records(ast.parse(path.read_text())))}
    assert not found, f"read or write these through condseg.records: {found}"
