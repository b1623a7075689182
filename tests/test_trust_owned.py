"""Issue 23, classes 4 and 6: the files condseg owns are its own, and special files never block.

A lock path holding anything but a regular file of one name (a link, a folder, a FIFO, a
socket, a hard link) is refused naming it, and nothing is written through it; a ``.OUT.partial``
folder condseg did not mark is never emptied; a study's or a run's own record, damaged, is one
line naming the file and what to do. A FIFO, a device, a socket or a link loop given where a
file goes (an image in a folder, a split file, a model, weights, config or study file, a
predict input) is refused or skipped by name without being opened: the commands run in a child
process with a time limit, so that a hang fails the test instead of blocking the suite."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from condseg import cli
from condseg.data.synthetic import synthesize
from condseg.errors import CrossValidationError, DataError, StudyError, TrainingError
from condseg.evaluation.evaluate import read_results
from condseg.filekind import file_kind, special
from condseg.files import read_json, read_text
from condseg.layout import CVDir, EvalDir, StageDir, StudyDir
from condseg.outputs import LOCK, STAGED, OutputError, check_staged, claim, staged
from condseg.study.run import run_study
from condseg.study.runs import plan_runs
from condseg.study.spec import read_study
from condseg.training.cv import _recorded_metrics
from condseg.training.logs import RunLog
from condseg.training.results import StageResult

runner = CliRunner()


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# --- class 4: the lock file is condseg's own -------------------------------------------------


def _socket(path: Path) -> None:
    """A Unix socket at ``path`` (bound from its folder: socket paths are short)."""
    here = Path.cwd()
    os.chdir(path.parent)
    try:
        socket.socket(socket.AF_UNIX).bind(path.name)
    finally:
        os.chdir(here)


#: Each thing a lock path may hold instead of a lock file, made from (lock path, user's file),
#: with the words naming it (a pattern).
NOT_A_LOCK: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "link to a file": (lambda lock, mine: lock.symlink_to(mine), "a symbolic link"),
    "link to a folder": (lambda lock, mine: lock.symlink_to(mine.parent), "a symbolic link"),
    "dangling link": (lambda lock, mine: lock.symlink_to(mine.with_name("new.txt")),
                      "a symbolic link"),
    "hard link": (lambda lock, mine: os.link(mine, lock), r"a file with \d names \(hard links\)"),
    "folder": (lambda lock, mine: lock.mkdir(), "a folder"),
    "fifo": (lambda lock, mine: os.mkfifo(lock), r"a FIFO \(named pipe\)"),
    "socket": (lambda lock, mine: _socket(lock), "a socket"),
}


@pytest.mark.timeout(120)  # a lock followed or re-checked wrongly loops
@pytest.mark.parametrize("kind", NOT_A_LOCK)
def test_a_lock_path_that_holds_no_lock_file_is_refused_and_never_written_through(
    kind: str, tmp_path: Path
) -> None:
    make, words = NOT_A_LOCK[kind]
    mine = tmp_path / "mine" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("my notes")
    prepared = tmp_path / "prepared"
    for folder, hold in ((tmp_path / "out", lambda: claim(tmp_path / "out")),
                         (tmp_path / ".prepared.partial", lambda: staged(prepared))):
        folder.mkdir()
        (folder / STAGED).touch()  # as a partial folder a killed prepare left (claim: a file)
        make(folder / LOCK, mine)
        with pytest.raises(OutputError) as refused, hold():
            pytest.fail("the block ran on a foreign lock")
        line = _one_line(str(refused.value))
        assert re.match(rf"{re.escape(str(folder / LOCK))} is {words}, not a lock file of "
                        "condseg", line), line
        assert "free space" not in line  # not the advice for a full disk
        assert mine.read_text() == "my notes"  # nothing written through a link, and nothing
        assert os.listdir(mine.parent) == ["notes.txt"]  # created at its target
        assert sorted(os.listdir(folder)) == sorted([LOCK, STAGED]) and not prepared.exists()


@pytest.mark.timeout(120)  # a lock followed or re-checked wrongly loops
def test_a_foreign_lock_is_one_line_from_the_cli_and_the_users_file_survives(
    data: Path, model_file: Path, tmp_path: Path
) -> None:
    mine = tmp_path / "mine.txt"
    mine.write_text("my notes")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).symlink_to(mine)
    result = runner.invoke(cli.app, ["predict", str(model_file), str(data / "images"),
                                     "--out", str(out), "--workers", "0"])
    assert result.exit_code == 2
    assert _one_line(result.output) == (f"error: {out / LOCK} is a symbolic link, not a lock "
                                        "file of condseg, which never writes through it; move "
                                        "it away, or choose another output folder")
    assert mine.read_text() == "my notes" and os.listdir(out) == [LOCK]


# --- class 4: a partial folder is cleared only when condseg marked it ------------------------


@pytest.mark.timeout(120)  # a lock followed or re-checked wrongly loops
@pytest.mark.parametrize("kind", ["folder", "link to a folder"])
def test_a_partial_folder_condseg_did_not_make_is_refused_and_kept(
    kind: str, data: Path, tmp_path: Path
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    partial = tmp_path / ".prepared.partial"
    if kind == "folder":
        mine.rename(partial)
        mine = partial
    else:
        partial.symlink_to(mine)
    out = tmp_path / "prepared"
    expected = (f"{partial} is not a partial folder of condseg (it has no {STAGED} file), and "
                f"it would be emptied to build {out}; move it away, or choose another output "
                "folder")
    result = runner.invoke(cli.app, ["data", "prepare", "folder", str(data / "images"),
                                     str(data / "masks"), str(out)])
    assert result.exit_code == 2 and _one_line(result.output) == f"error: {expected}"
    for refused in (lambda: check_staged(out), lambda: staged(out).__enter__()):
        with pytest.raises(OutputError) as error:
            refused()
        assert str(error.value) == expected
    assert sorted(os.listdir(mine)) == ["thesis.tex"] and not out.exists()
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_a_partial_folder_is_marked_while_built_and_the_output_carries_no_mark(
    tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with staged(out) as partial:
        assert (partial / STAGED).is_file()
        (partial / "a.txt").write_text("x")
    assert sorted(os.listdir(out)) == ["a.txt"]
    with pytest.raises(RuntimeError), staged(tmp_path / "failed") as partial:
        raise RuntimeError("failed")
    assert not partial.exists() and not (tmp_path / "failed").exists()


# --- class 4: a study's and a run's own records, damaged -------------------------------------

#: Ways a JSON record is damaged: its bytes, and the words the one line gives for them.
DAMAGED_JSON = {
    "empty": (b"", "is damaged: empty"),
    "truncated": (b'{"model_file": "stage1/model.saf', "is damaged: not JSON"),
    "not UTF-8": (b'{"name": "\xff\xfe"}', "is damaged: not UTF-8 text (byte 10)"),
}


def _damage(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _study(data: Path, out: Path):
    spec = read_study(None, {"data": str(data), "methods": ["unet"], "budget": {"epochs": 2}})
    study = StudyDir(out)
    study.path.mkdir(parents=True, exist_ok=True)
    study.spec.write_text(spec.to_yaml())
    return spec, study


@pytest.mark.parametrize("damage", [
    *DAMAGED_JSON.values(),
    (b'{"name": "unet"}', "holds a JSON object where condseg writes a JSON array"),
    (b'["unet"]', "an entry is not as condseg writes it (AttributeError"),
    (b'[{"method": "unet", "overrides": []}]', "an entry is not as condseg writes it (KeyError"),
])
def test_a_damaged_protocol_json_is_one_line_naming_it(
    damage: tuple[bytes, str], data: Path, tmp_path: Path
) -> None:
    spec, study = _study(data, tmp_path / "S")
    _damage(study.protocol, damage[0])
    with pytest.raises(StudyError) as error:
        run_study(spec, study.path, dry_run=True)
    line = _one_line(str(error.value))
    assert line.startswith(f"{study.protocol} ") and damage[1] in line
    assert line.endswith("or move it away to resolve the methods again (what a method "
                         "receives may then change)")


def test_a_damaged_study_yaml_is_one_line_from_the_cli(data: Path, tmp_path: Path) -> None:
    _, study = _study(data, tmp_path / "S")
    study.spec.write_bytes(study.spec.read_bytes() + b"# caf\xe9\n")  # latin-1, not UTF-8
    result = runner.invoke(cli.app, ["study", "--out", str(study.path), "--dry-run"])
    assert result.exit_code == 2
    assert _one_line(result.output).startswith(f"error: {study.spec} is damaged: not UTF-8 "
                                               "text (byte ")
    _damage(study.protocol, b"[")
    study.spec.write_bytes(study.spec.read_bytes()[:-8])
    result = runner.invoke(cli.app, ["study", "--out", str(study.path), "--dry-run"])
    assert result.exit_code == 2
    assert _one_line(result.output).startswith(f"error: {study.protocol} is damaged: not JSON")


ATTEMPT = {"started": "2026-12-07T10:00:00", "wall_s": 12.5, "peak_rss_mb": 900.0,
           "exit_code": 0, "host": "node1", "command": "condseg train", "job_id": "7"}


@pytest.mark.parametrize(("line", "words"), [
    (b'["a list"]', "line 2 is not a JSON object"),
    (json.dumps({**ATTEMPT, "wall_s": "long"}).encode(), "line 2 has no float wall_s"),
    (json.dumps({k: v for k, v in ATTEMPT.items() if k != "exit_code"}).encode(),
     "line 2 has no int exit_code"),
    (b'{"host": "caf\xe9"}', "not UTF-8 text (byte "),
])
def test_a_damaged_attempts_jsonl_is_one_line_naming_it(
    line: bytes, words: str, data: Path, tmp_path: Path
) -> None:
    spec, study = _study(data, tmp_path / "S")
    run = plan_runs(spec, study)[0]
    _damage(run.job.attempts, json.dumps(ATTEMPT).encode() + b"\n" + line + b"\n")
    with pytest.raises(StudyError) as error:
        run.attempts()
    text = _one_line(str(error.value))
    assert text.startswith(f"{run.job.attempts} is damaged: ") and words in text
    assert text.endswith("delete that line or the file (only the record of the run's jobs "
                         "is lost)")
    # A line a killed job left half-written is still skipped, not an error.
    _damage(run.job.attempts, json.dumps(ATTEMPT).encode() + b'\n{"started": "2026-')
    assert [a.job_id for a in run.attempts()] == ["7"]


@pytest.mark.parametrize("damage", [
    *DAMAGED_JSON.values(),
    (b'["stage1/model.safetensors"]', "holds a JSON array where condseg writes a JSON object"),
    (b'{"model_file": 3, "metrics": {}}', "has no model_file and metrics"),
])
def test_a_damaged_record_of_a_run_or_cross_validation_is_one_line_naming_it(
    damage: tuple[bytes, str], tmp_path: Path
) -> None:
    stage = StageDir(tmp_path / "run" / "stage1")
    _damage(stage.result, damage[0])
    with pytest.raises(TrainingError) as error:
        StageResult.read(stage)
    line = _one_line(str(error.value))
    assert line.startswith(f"{stage.result} ") and damage[1].split(" where")[0] in line
    assert line.endswith("move it away and resume the run (--resume RUN) to finish that "
                         "stage again")
    cv = CVDir(tmp_path / "cv")
    _damage(cv.summary, damage[0] if b"model_file" not in damage[0] else b'{"metrics": 3}')
    with pytest.raises(CrossValidationError) as error:
        _recorded_metrics(cv)
    assert _one_line(str(error.value)).startswith(f"{cv.summary} is damaged: ")


@pytest.mark.parametrize(("summary", "per_image", "words"), [
    *((damage, b"name,dice\na,0.5\n", words) for damage, words in DAMAGED_JSON.values()),
    (b'{"metrics": {}}', b"name,dice\na,0.5\n", "has no metrics and protocol"),
    (b'{"metrics": {}, "protocol": {}}', b"name,dice\na,half\n", "per_image.csv is damaged"),
    (b'{"metrics": {}, "protocol": {}}', b"name,dice\nna\xefve,0.5\n", "not UTF-8 text"),
    (b'{"metrics": {}, "protocol": {}}', None, "has summary.json but no per_image.csv"),
])
def test_a_damaged_evaluation_a_cross_validation_reuses_is_one_line_naming_it(
    summary: bytes, per_image: bytes | None, words: str, tmp_path: Path
) -> None:
    folder = EvalDir(tmp_path / "cv" / "runs" / "fold0" / "evaluation" / "val")
    _damage(folder.summary, summary)
    if per_image is not None:
        folder.per_image.write_bytes(per_image)
    with pytest.raises(DataError) as error:
        read_results(folder.path)
    line = _one_line(str(error.value))
    assert line.startswith(str(folder.path)) and words in line
    assert line.endswith(f"move {folder.path} away to evaluate again")


@pytest.mark.parametrize("damage", [b'{"model_file": "caf\xe9"}', b"{", b'["a list"]'])
def test_compare_takes_no_model_from_a_damaged_result_json(
    damage: bytes, tmp_path: Path
) -> None:
    from condseg.evaluation.compare.figures import model_file
    from condseg.evaluation.compare.result import Entry, RunInfo

    run = tmp_path / "run"
    _damage(StageDir(run / "stage1").result, damage)
    entry = Entry(run, "run", [], RunInfo(run, {}, "stage1"))
    assert model_file(entry) is None  # no traceback: the figure notes that no model was found


def test_a_run_config_yaml_not_utf8_is_one_line_on_resume(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_bytes(b"seed: 0\n# caf\xe9\n")
    (run / "log.csv").write_text("epoch\n")
    result = runner.invoke(cli.app, ["train", "--data", str(data), "--resume", str(run)])
    assert result.exit_code == 2
    assert _one_line(result.output) == (f"error: {run / 'config.yaml'} is damaged: not UTF-8 "
                                        "text (byte 13); save it as UTF-8 text")


# --- class 6: special files never block ------------------------------------------------------


@pytest.mark.timeout(60)
def test_condseg_s_own_files_that_are_fifos_are_refused_unopened(tmp_path: Path) -> None:
    """condseg's own records and logs are special files too when someone put one there: a FIFO
    ``attempts.jsonl`` (read by the study), ``train.log`` (appended to on resume) or a
    ``result.json`` would block the read or the open; each is refused by name."""
    for name in ("attempts.jsonl", "train.log", "result.json"):
        os.mkfifo(tmp_path / name)
    with pytest.raises(StudyError, match=r"attempts.jsonl is a FIFO .*not opened"):
        read_text(tmp_path / "attempts.jsonl", StudyError, "move it away")
    with pytest.raises(TrainingError, match=r"train.log is a FIFO .*not opened"):
        RunLog(Console()).attach(tmp_path / "train.log")
    with pytest.raises(TrainingError, match=r"result.json is a FIFO .*not opened"):
        read_json(tmp_path / "result.json", dict, TrainingError, "run the stage again")


def test_special_names_what_a_path_is_without_opening_it(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "to-pipe.png").symlink_to(tmp_path / "pipe.png")
    (tmp_path / "loop.png").symlink_to("loop.png")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "to-dir.png").symlink_to(tmp_path / "dir.png")
    (tmp_path / "file.png").write_bytes(b"\x89PNG")
    (tmp_path / "to-file.png").symlink_to(tmp_path / "file.png")
    _socket(tmp_path / "sock")
    found = {name: special(tmp_path / name) for name in sorted(os.listdir(tmp_path))}
    found["/dev/zero"] = special("/dev/zero")
    found["missing"] = special(tmp_path / "missing")
    assert found == {
        "dir.png": "a folder", "file.png": None, "loop.png": "a symbolic link loop",
        "pipe.png": "a FIFO (named pipe)", "sock": "a socket",
        "to-dir.png": "a symbolic link to a folder",
        "to-file.png": None, "to-pipe.png": "a symbolic link to a FIFO (named pipe)",
        "/dev/zero": "a character device", "missing": None}
    assert file_kind(tmp_path / "pipe.png") == "a FIFO (named pipe)"  # read: would block
    assert file_kind("/dev/zero") == "a character device"


# Runs CLI commands in-process, one after the other, printing each one's status and output as a
# JSON line as soon as it ends; the test gives the whole child a time limit.
CHILD = """
import json, sys
from typer.testing import CliRunner
from condseg.cli import app

for argv in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, argv)
    print(json.dumps({"argv": argv, "code": result.exit_code, "output": result.output}),
          flush=True)
"""


def _run_all(commands: list[list[str]], tmp_path: Path, seconds: float) -> list[dict]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    src = str(Path(cli.__file__).parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, str(script), json.dumps(commands)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = child.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        child.kill()
        output, _ = child.communicate()
    done = [json.loads(line) for line in output.splitlines() if line.startswith('{"argv"')]
    assert len(done) == len(commands), (
        f"hung or failed at {commands[len(done)]} (after {len(done)} commands): {output[-3000:]}")
    return done


def test_special_files_are_refused_or_skipped_by_name_and_nothing_blocks(
    model_file: Path, tmp_path: Path
) -> None:
    data = synthesize(tmp_path / "data", n_train=8, n_val=4, size=64)
    for folder in ("images", "masks"):
        os.mkfifo(data / folder / "zz.png")  # named like an image, listed in a split
    with (data / "val.txt").open("a") as f:
        f.write("zz\n")
    clean = synthesize(tmp_path / "clean", n_train=4, n_val=2, size=64)
    bare = synthesize(tmp_path / "bare", n_train=4, n_val=2, size=64)
    (bare / "val.txt").unlink()
    os.mkfifo(bare / "val.txt")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "to-pipe.png").symlink_to(tmp_path / "pipe.png")
    (tmp_path / "loop.png").symlink_to("loop.png")
    for name in ("pipe.safetensors", "pipe.yaml", "pipe.pth"):
        os.mkfifo(tmp_path / name)
    pipe = {suffix: str(tmp_path / f"pipe{suffix}") for suffix in (".safetensors", ".yaml",
                                                                   ".pth", ".png")}
    images, out = str(data / "images"), str(tmp_path / "out")
    commands = {
        "data check": ["data", "check", str(data)],
        "data check, split file": ["data", "check", str(bare)],
        "predict DIR and FILEs": ["predict", str(model_file), images, pipe[".png"],
                                  str(tmp_path / "to-pipe.png"), str(tmp_path / "loop.png"),
                                  "/dev/zero", "--out", out, "--workers", "0"],
        "predict, model file": ["predict", pipe[".safetensors"], images, "--out", out + "2"],
        "predict, device as model": ["predict", "/dev/zero", images, "--out", out + "3"],
        "evaluate": ["evaluate", str(model_file), "--data", str(data), "--workers", "0"],
        "train, config file": ["train", "--data", str(clean), "--config", pipe[".yaml"],
                               "--out", out + "4"],
        "train, weights file": ["train", "--data", str(clean), "--config", "demo", "--out",
                                out + "5", "model.pretrained=true",
                                f"model.weights={pipe['.safetensors']}"],
        "study file": ["study", "--config", pipe[".yaml"], "--data", str(clean), "--dry-run"],
        "convert-official": ["convert-official", pipe[".pth"], out + "6.safetensors"],
        "data prepare folder": ["data", "prepare", "folder", images, str(data / "masks"),
                                out + "7", "--split", "0.5,0.5"],
    }
    results = dict(zip(commands, _run_all(list(commands.values()), tmp_path, 400), strict=True))
    fifo = "is a FIFO (named pipe), not a regular file, and is not opened"
    flat = {name: " ".join(r["output"].split()) for name, r in results.items()}
    codes = {name: r["code"] for name, r in results.items()}
    assert codes == {"data check": 1, "data check, split file": 1, "predict DIR and FILEs": 1,
                     "predict, model file": 2, "predict, device as model": 2, "evaluate": 2,
                     "train, config file": 2, "train, weights file": 2, "study file": 2,
                     "convert-official": 2, "data prepare folder": 0}, flat
    assert f"image {data / 'images' / 'zz.png'} {fifo}" in flat["data check"]
    assert f"mask {data / 'masks' / 'zz.png'} {fifo}" in flat["data check"]
    assert f"split file {bare / 'val.txt'} {fifo}" in flat["data check, split file"]
    for failed in (f"failed: {pipe['.png']}: a FIFO (named pipe), not a regular file",
                   f"failed: {tmp_path / 'to-pipe.png'}: a symbolic link to a FIFO",
                   f"failed: {tmp_path / 'loop.png'}: a symbolic link loop",
                   "failed: /dev/zero: a character device",
                   f"failed: {data / 'images' / 'zz.png'}: image {data / 'images' / 'zz.png'} "
                   f"{fifo}"):
        assert failed in flat["predict DIR and FILEs"]
    assert (tmp_path / "out" / "synth_0000.png").is_file()  # the others were predicted
    for name, words in (("predict, model file", f"model file {pipe['.safetensors']} {fifo}"),
                        ("predict, device as model", "model file /dev/zero is a character "
                         "device"),
                        ("train, config file", f"config file {pipe['.yaml']} {fifo}"),
                        ("train, weights file", f"{pipe['.safetensors']} {fifo}"),
                        ("study file", f"study file {pipe['.yaml']} {fifo}"),
                        ("convert-official", f"checkpoint {pipe['.pth']} {fifo}"),
                        ("evaluate", f"image {data / 'images' / 'zz.png'} {fifo}")):
        output = results[name]["output"]  # train tells what it starts first
        last = output.strip().splitlines()[-1]
        assert "Traceback" not in output and last.startswith("error: ") and words in last, output
    not_converted = (tmp_path / "out7" / "not_converted.tsv").read_text()
    assert f"image {data / 'images' / 'zz.png'} {fifo}" in not_converted
