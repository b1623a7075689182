"""DDP on CPU: two gloo processes train both stages (Lightning relaunches the script per rank),
in channels_last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from condseg.config import load_config
from condseg.data.synthetic import synthesize
from condseg.epoch_log import read_epochs
from condseg.training.cost import stage_flops

SCRIPT = """
import sys
from condseg.config import load_config
from condseg.training import train

config = load_config("demo", [
    "data.size=64", "data.batch_size=2", "model.options.width=16", "stages.stage1.max_epochs=1",
    "stages.stage2.max_epochs=1", "stages.stage1.limit_train_batches=2",
    "stages.stage2.limit_train_batches=2",
    "progress_bar=false", "accelerator=cpu", "devices=2", "strategy=ddp",
    "memory_format=channels_last",  # a GPU's layout, set before DDP builds its buckets
])
result = train(config, sys.argv[1], sys.argv[2])
print("RESULT", result.model_file)
"""


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path: Path) -> None:
    data = synthesize(tmp_path / "data", n_train=8, n_val=4, size=64)
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(data), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT" in proc.stdout
    config = load_config(tmp_path / "run" / "config.yaml")
    for n in (1, 2):
        summary = json.loads((tmp_path / "run" / f"stage{n}" / "result.json").read_text())
        assert (tmp_path / "run" / summary["model_file"]).is_file()  # relative to the run
        # each epoch's cost: the images of both processes (2 batches of 2 each)
        (row,) = read_epochs(tmp_path / "run" / f"stage{n}" / "metrics.csv").values()
        assert row["train_tflop"] == 8 * stage_flops(config, f"stage{n}") / 1e12
        assert row["epoch_seconds"] > 0
    assert "world_size: 2" in proc.stderr or "distributed_backend=gloo" in proc.stderr
    assert "Grad strides do not match" not in proc.stderr  # DDP saw the final layout
