"""The user documentation is current and self-contained: the README names every method and
preset that exists, no document points at files the repository does not ship, and the README's
Quick start runs as written on Kvasir-SEG (slow; skips without ../shared/data)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from condseg import cli
from condseg.cli import app
from condseg.config import list_presets, load_config
from condseg.data.dataset import find_pair, read_split

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of level 2."""
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def quick_start_commands() -> list[list[str]]:
    """The ``condseg`` command lines of the README's Quick start block, as a shell splits them
    (trailing comments dropped), without the program name."""
    block = _section(README.read_text(), "## Quick start on Kvasir-SEG\n")
    code = block.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True)[1:] for line in code.splitlines()
            if line.startswith("condseg ")]


def test_readme_lists_every_registered_method() -> None:
    intro = README.read_text().split("\n## ", 1)[0]
    rows = [line for line in intro.splitlines() if line.startswith("| `")]
    named = [name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])]
    # A fresh process: other tests register methods of their own in this one.
    packaged = subprocess.run(
        [sys.executable, "-c", "from condseg.recipes import list_methods; "
                               "print(*list_methods())"],
        capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert sorted(named) == sorted(packaged)


def test_readme_lists_every_preset() -> None:
    text = README.read_text()
    paragraph = text.split("Presets (`--config NAME`", 1)[1].split("Any YAML file", 1)[0]
    assert sorted(re.findall(r"`([a-z0-9-]+)`", paragraph)) == list_presets()


def test_no_document_points_outside_the_repository() -> None:
    """DESIGN.md, the papers' text and ../shared are not shipped: cite, don't point."""
    for path in DOCS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found = re.search(r"DESIGN(\.md|'s)?\b|papers/|shared/", line)
            assert found is None, f"{path.name}:{number}: {line.strip()}"


def test_quick_start_shows_every_step_through_compare() -> None:
    steps = [args[:2] if args[0] == "data" else args[:1] for args in quick_start_commands()]
    assert steps == [["data", "prepare"], ["data", "check"], ["train"], ["train"], ["train"],
                     ["train"], ["evaluate"], ["predict"], ["compare"]]


# Tiny settings appended to each `condseg train` line of the Quick start (not to --resume,
# which continues with the run's own config): 32 px, one epoch per stage, narrow networks,
# no ImageNet download.
TINY = ["--epochs", "1", "model.pretrained=false", "model.options.encoder=resnet18",
        "data.size=32", "data.batch_size=4", "data.num_workers=0", "progress_bar=false"]
TINY_BY_METHOD = {None: ["model.options.width=16"],
                  "unet": ["model.options.decoder_channels=[32,16,16,8,8]"]}
RAW = "~/Downloads/Kvasir-SEG"


def _restrict(dataset: Path, n_train: int = 4, n_val: int = 2) -> None:
    """Keep the prepared official split's first names only (the files stay as prepared)."""
    for split, n in (("train", n_train), ("val", n_val)):
        names = read_split(dataset, split)[:n]
        (dataset / f"{split}.txt").write_text("\n".join(names) + "\n")


@pytest.mark.slow
def test_readme_quick_start_runs_as_written_on_kvasir(
    kvasir_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.console, "width", 250)
    (tmp_path / "frames").mkdir()  # step 4's folder of new frames
    for name in read_split(kvasir_dir, "val")[-2:]:
        image, _ = find_pair(kvasir_dir, name)
        (tmp_path / "frames" / image.name).symlink_to(image)
    runner, outputs = CliRunner(), {}
    for args in quick_start_commands():
        args = [str(kvasir_dir) if arg == RAW else arg for arg in args]
        if args[0] == "train" and "--resume" not in args:
            method = args[args.index("--method") + 1] if "--method" in args else None
            args += [*TINY, *TINY_BY_METHOD[method]]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, f"condseg {shlex.join(args)}\n{result.output}"
        out = [f"{a} {args[i + 1]}" for i, a in enumerate(args) if a in ("--out", "--resume")]
        outputs[" ".join([args[0], *out[:1]])] = " ".join(result.output.split())
        if args[:2] == ["data", "prepare"]:
            _restrict(Path(args[-1]))

    run = tmp_path / "runs" / "kvasir-seg"
    first = outputs["train --out runs/kvasir-seg"]
    precision = load_config(run / "config.yaml").precision
    assert f"precision {precision}, seed 42" in first and "data " in first
    assert "train 4, val 2" in first and "stage2: condseg (" in first
    assert "no test.txt: the validation split, which selected the model" in first
    assert load_config(tmp_path / "runs" / "k2" / "config.yaml").precision == "bf16-mixed"
    assert "stage2 already finished" in outputs["train --resume runs/kvasir-seg"]
    for folder in ("val", "val-original"):
        protocol = json.loads((run / "evaluation" / folder / "summary.json").read_text())
        assert (protocol["protocol"]["split"], protocol["protocol"]["n_images"]) == ("val", 2)
        assert protocol["protocol"]["execution"]["precision"] == "float32"
    assert len(list((tmp_path / "predictions").glob("*_overlay.png"))) == 2
    compared = outputs["compare --out comparison"]
    assert "kvasir-seg/val (network): the validation split, which selected each model" in compared
    assert "condseg" in compared and "unet" in compared
    table = (tmp_path / "comparison" / "compare.md").read_text()
    assert "kvasir-seg/val (original)" in table and "| unet |" in table
