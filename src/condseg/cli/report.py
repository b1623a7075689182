"""Commands that measure, import and show: benchmark, convert-official, demo, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from condseg.cli.render import console, user_errors


def benchmark(
    model: Annotated[str, typer.Option(
        help="Model name (see `condseg models`), or all: every registered model.")] = "condseg",
    size: Annotated[int, typer.Option(help="Square input size in pixels.")] = 256,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", "--batch", help="Images per batch.")] = 4,
    train: Annotated[bool, typer.Option("--train", help="Also time a full training step.")]
    = False,
    repeats: Annotated[int, typer.Option(help="Timed repeats.")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up repeats.")] = 2,
    rounds: Annotated[int, typer.Option(
        min=1, help="Measure the paths this many times in turn and pool their times (a shared "
             "machine's slow spells then hit every path alike).")] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: usable cores).")]
    = None,
    json_file: Annotated[Path | None, typer.Option(
        "--json", metavar="FILE", help="Also write every figure to this JSON file.")] = None,
) -> None:
    """Speed, peak memory and FLOPs of the default, float32-fast and plain paths, and their
    ratios to the plain path."""
    from condseg.bench import benchmark_models, print_report, write_json

    with user_errors():
        if json_file is not None:  # before minutes of measuring, not after
            _check_file_output(json_file, "--json")
        report = benchmark_models(model, size=size, batch_size=batch_size, train=train,
                                  repeats=repeats, warmup=warmup, threads=threads, rounds=rounds)
    print_report(report, console)
    if json_file is not None:
        with user_errors():
            console.print(f"wrote {write_json(report, json_file)}", highlight=False)


def _check_file_output(path: Path, option: str) -> None:
    """Refuse a file output that cannot be written: a folder, or a place that is no writable
    folder."""
    import os

    from condseg.errors import OutputError

    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name")
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: {path.parent} is not a writable folder; choose "
                          "another place for the file")


def convert_official(
    checkpoint: Annotated[Path, typer.Argument(help="A .pth state dict of the authors' code.")],
    out: Annotated[Path, typer.Argument(help="Our model file to write (.safetensors).")],
    size: Annotated[int | None, typer.Option(
        help="Input size the model was trained at (default: the authors' recipe's, 256 for "
             "ConDSeg, 352 for MSNet, M2SNet and CHNet).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Import a checkpoint trained with the authors' code (ConDSeg, Net_0, ConDSeg-PVT, MSNet,
    M2SNet, CHNet), recognised from its keys."""
    from condseg.convert import convert_official

    with user_errors():
        net, path = convert_official(checkpoint, out, size, overwrite=overwrite)
    console.print(f"{net.name}: wrote {path}")


def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo writes.")]
    = Path("demo-run"),
) -> None:
    """Synthesise data, train both stages of a narrow ConDSeg, evaluate, predict (CPU, <5 min)."""
    from condseg.demo import run_demo
    from condseg.training.logs import quiet_lightning

    quiet_lightning()
    with user_errors():
        run_demo(out, console=console)


def compare(
    inputs: Annotated[list[Path], typer.Argument(
        help="Run folders (their RUN/evaluation/*/), evaluation folders (summary.json + "
             "per_image.csv) or nnU-Net v2 trainer/fold folders (validation/summary.json); "
             "the first is the reference for the statistics."
    )],
    label: Annotated[list[str] | None, typer.Option(
        help="Row label of each input, in order (repeat once per input; with --pool, inputs "
             "of one label form one row)."
    )] = None,
    out: Annotated[Path | None, typer.Option(
        help="Folder for compare.md, compare.csv, compare.tex and stats.csv."
    )] = None,
    figure: Annotated[Path | None, typer.Option(
        help="Folder for predictions.png/.pdf (loads each model) and curves.png/.pdf."
    )] = None,
    images: Annotated[str, typer.Option(
        help="Rows of predictions.png: N (evenly spaced), worst:K or best:K (by the first "
             "input's Dice against the others'), or image names NAME,NAME."
    )] = "4",
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    pool: Annotated[bool, typer.Option(
        "--pool", help="Runs of one method (or one --label) form one row: the mean ± std over "
                       "them; the folds' splits folds/<k>/val are one column folds/*/val."
    )] = False,
    curves_x: Annotated[str, typer.Option(
        "--curves-x", metavar="epoch|tflop|time",
        help="x-axis of curves.png: epoch (the final stage's epochs), tflop (cumulative "
             "training TFLOP) or time (cumulative training wall time); tflop and time draw "
             "every stage of a run on one line."
    )] = "epoch",
) -> None:
    """Methods side by side as in the paper's Table 1, with paired per-image Dice statistics."""
    from condseg.evaluation.compare import compare as run_compare

    with user_errors():
        run_compare(inputs, labels=label, out_dir=out, figure_dir=figure, images=images,
                    overwrite=overwrite, console=console, pool=pool, curves_x=curves_x)
