"""What a run asks of the machine (accelerator, devices, strategy, nodes) is refused in one line
before Lightning starts anything, and DDP children end with the process that launched them.
No test here starts more than two processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from condseg import cli
from condseg.children import PARENT_ENV
from condseg.config import load_config
from condseg.data.synthetic import synthesize
from condseg.errors import ResourceError
from condseg.training import resources, train
from condseg.training import trainer as trainer_module

TINY = ["data.size=32", "data.batch_size=4", "data.num_workers=0", "progress_bar=false"]


@pytest.fixture
def no_lightning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a Lightning trainer is ever built."""

    def refuse(*args, **kwargs):
        raise AssertionError("Lightning was started")

    monkeypatch.setattr(trainer_module.L, "Trainer", refuse)


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same answers on any machine: 4 usable CPU cores, no GPU."""
    monkeypatch.setattr(resources, "usable_cores", lambda: 4)
    monkeypatch.setattr(resources, "_available_accelerators", lambda: {"cpu": 4})


@pytest.mark.parametrize(("overrides", "message"), [
    (["accelerator=tpu"], "accelerator=tpu is not available on this machine; here: auto, cpu"),
    (["accelerator=gpus"], "accelerator=gpus is not an accelerator; here: auto, cpu"),
    (["devices=99"], "devices=99: cpu has 4 usable CPU cores (one process each) on this "
                     "machine; here: auto, 1 to 4, -1 (all)"),
    (["devices=0"], "devices=0: cpu has 4 usable CPU cores"),
    (["devices=many"], "devices=many is not a number of devices; cpu here: auto, 1 to 4"),
    (["devices=[0, 1]"], "devices=[0, 1] does not name devices of cpu on this machine"),
    (["strategy=nonsense"], "strategy=nonsense is not a Lightning strategy; choose auto, ddp, "),
    (["strategy=deepspeed"], "strategy=deepspeed needs the deepspeed package"),
    (["strategy=xla"], "strategy=xla "),
    (["strategy=single_device", "devices=2"], "strategy=single_device runs one process, but "
                                              "devices asks for 2"),
    (["num_nodes=2"], "num_nodes=2 needs a cluster launcher"),
], ids=lambda v: v[0] if isinstance(v, list) else "")
def test_machine_settings_are_refused_before_anything_starts(
    overrides: list[str], message: str, tmp_path: Path, no_lightning: None, four_cores: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("SLURM_NTASKS", "MASTER_ADDR", "NODE_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ResourceError) as refused:
        train(load_config("demo", [*TINY, *overrides]), tmp_path / "data", tmp_path / "run")
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    assert not (tmp_path / "run").exists()


def test_processes_that_would_get_less_than_a_batch_each_are_refused(
    tmp_path: Path, no_lightning: None, four_cores: None
) -> None:
    data = synthesize(tmp_path / "data", n_train=8, n_val=2, size=32)
    for overrides, message in [
        (["devices=3", "strategy=ddp"], "3 training processes (devices=3, num_nodes=1) would "
         "each get 2 of the 8 training images, less than one batch (data.batch_size=4); use at "
         "most 2 processes or a smaller data.batch_size"),
        (["devices=3", "strategy=ddp", "data.batch_size=2"], "3 training processes (devices=3, "
         "num_nodes=1) cannot share the 2 validation images (one each at least); use at most 2 "
         "processes"),
    ]:
        with pytest.raises(ResourceError) as refused:
            train(load_config("demo", [*TINY, *overrides]), data, tmp_path / "run")
        assert str(refused.value) == message
        assert not (tmp_path / "run").exists()


def test_the_cli_refuses_in_one_line_with_exit_code_2(tmp_path: Path, four_cores: None) -> None:
    result = CliRunner().invoke(cli.app, ["train", "--config", "demo", "--data", str(tmp_path),
                                          "--out", str(tmp_path / "run"), "devices=99"])
    assert result.exit_code == 2
    assert result.output.startswith("error: devices=99: cpu has 4 usable CPU cores")
    assert result.output.count("\n") == 1
    assert not (tmp_path / "run").exists()


PARENT = """
import os, subprocess, sys, time
from condseg.children import record_parent
record_parent()  # what ParentWatch does in the launching process
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
print(child.pid, flush=True)
time.sleep(600)
"""
CHILD = """
import sys, time
from pathlib import Path
from condseg.children import die_with_parent
die_with_parent()
Path(sys.argv[1]).write_text("watching")
time.sleep(600)
"""


def _gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_ddp_child_dies_with_its_parent(tmp_path: Path) -> None:
    marker = tmp_path / "watching"
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", PARENT_ENV)}
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(PARENT),
                               textwrap.dedent(CHILD), str(marker)],
                              env=env, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the child did not start"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _gone(child, 10), "the child outlived its parent"
    finally:
        for pid in (parent.pid, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_whose_parent_is_already_gone_exits_at_once(tmp_path: Path) -> None:
    marker = tmp_path / "watching"
    env = {**os.environ, PARENT_ENV: "1"}  # its parent is this test, not process 1
    env.pop("LOCAL_RANK", None)
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), str(marker)],
                           env=env, timeout=60)
    assert child.returncode == 1 and not marker.exists()
