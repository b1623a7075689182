"""The ``condseg`` command: parses arguments, then calls the library (nothing else lives here).

Library modules are imported inside each command so that ``condseg --help`` starts quickly.
Errors a user can fix (bad data, a missing file, a wrong option) are printed as one line and
exit with status 2; ``predict`` exits 1 when some inputs could not be used.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="ConDSeg and related methods for 2-D binary medical image segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare, check and synthesise datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()


class Stage(str, Enum):
    both = "both"
    one = "1"
    two = "2"


class Resolution(str, Enum):
    network = "network"
    original = "original"


class ExportFormat(str, Enum):
    onnx = "onnx"


def quiet_lightning() -> None:
    """Keep the terminal for our own output: Lightning's start-up notes (accelerator summary,
    tips, batch-limit notes) are INFO records of the logger it sets up when imported, and one
    of its modules warns about a deprecated call of its own."""
    import lightning.pytorch  # noqa: F401  (sets up the logger we quieten)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's errors about the user's input into one clear line and exit code 2."""
    from condseg.convert import ConversionError
    from condseg.data.dataset import DataError
    from condseg.inference.model_file import ModelFileError
    from condseg.models.encoders import WeightsUnavailableError
    from condseg.training import NonFiniteLossError, TrainingError

    try:
        yield
    except (
        ConversionError, DataError, ModelFileError, WeightsUnavailableError, TrainingError,
        NonFiniteLossError, FileNotFoundError, FileExistsError, ValueError,
    ) as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False)
        raise typer.Exit(2) from error


@app.command("models")
def models() -> None:
    """List the available model names."""
    from condseg.models.registry import describe_models

    for name, description in describe_models().items():
        console.print(f"[bold]{name}[/]  {description}")


@data_app.command("prepare")
def data_prepare(
    dataset: Annotated[str, typer.Argument(help="kvasir-seg, kvasir-sessile, glas, isic2016, "
                                                "isic2017, cvc-clinicdb or busi.")],
    raw: Annotated[Path, typer.Argument(help="The public release as downloaded and unpacked.")],
    out: Annotated[Path, typer.Argument(help="New folder for the canonical layout.")],
    seed: Annotated[int, typer.Option(help="Seed of the split when none is shipped.")] = 0,
    link: Annotated[bool, typer.Option(help="Hard-link unchanged images and masks.")] = False,
) -> None:
    """Convert a public dataset into the canonical layout with the paper's split."""
    import json

    from condseg.data.prepare import prepare

    with user_errors():
        path = prepare(dataset, raw, out, seed=seed, link=link)
    info = json.loads((path / "split_info.json").read_text())
    counts = ", ".join(f"{split} {n}" for split, n in info["counts"].items())
    console.print(f"wrote {path} ({counts}; split: {info['source']})", highlight=False)


@data_app.command("check")
def data_check(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder in the canonical layout.")],
    split: Annotated[list[str] | None, typer.Option(
        help="Split(s) to check (default: train, val, and test when present)."
    )] = None,
) -> None:
    """Verify every listed image and mask; exit 1 when there are errors."""
    from condseg.data.check import check_dataset

    with user_errors():
        report = check_dataset(dataset, splits=split or None)
    report.print(console)
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="New folder for the synthetic dataset.")],
    train: Annotated[int, typer.Option(help="Training images.")] = 48,
    val: Annotated[int, typer.Option(help="Validation images.")] = 16,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty OUT.")] = False,
) -> None:
    """Write the embedded synthetic endoscopy-like dataset (used by the demo and the tests)."""
    from condseg.data.synthetic import synthesize

    with user_errors():
        path = synthesize(out, n_train=train, n_val=val, size=size, seed=seed, overwrite=overwrite)
    console.print(f"wrote {path}")


@app.command("train")
def train(
    data: Annotated[Path | None, typer.Option(
        help="Dataset folder (canonical layout); optional when the config sets data.root.")]
    = None,
    config: Annotated[str | None, typer.Option(help=(
        "Preset name (see `condseg presets`) or YAML file. Default: the run's own config.yaml "
        "with --resume, else the 'default' preset."))] = None,
    model: Annotated[str | None, typer.Option(help="Model name (see `condseg models`).")]
    = None,
    stage: Annotated[Stage, typer.Option(help="Train stage 1, stage 2, or both.")] = Stage.both,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<config>).")]
    = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    precision: Annotated[str | None, typer.Option(
        help="32, bf16-mixed or 16-mixed (same as precision=...).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same as seed=...).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value config overrides, "
                                                                "e.g. stage2.lr=3e-4.")] = None,
) -> None:
    """Train with the paper's two-stage recipe (Consistency Reinforcement, then ConDSeg)."""
    from condseg.config import load_config
    from condseg.training import train as run_training

    quiet_lightning()
    with user_errors():
        run_dir = out or Path("runs") / Path(config or "default").stem
        if config is None:
            previous = run_dir / "config.yaml"
            config = str(previous) if resume and previous.is_file() else "default"
        extra = list(overrides or [])
        options = {"model.name": model, "precision": precision, "seed": seed}
        extra += [f"{key}={value}" for key, value in options.items() if value is not None]
        cfg = load_config(config, extra)
        result = run_training(cfg, data, run_dir, stage=stage.value, resume=resume)
    console.print(f"run directory: {result.run_dir}; model file: {result.model_file}")


@app.command("presets")
def presets() -> None:
    """List the packaged configuration presets."""
    from condseg.config import list_presets, load_config

    for name in list_presets():
        console.print(f"[bold]{name}[/]  {load_config(name).description}")


@app.command("evaluate")
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A model file (.safetensors).")],
    data: Annotated[Path, typer.Option(help="Dataset folder (canonical layout).")],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "val",
    resolution: Annotated[Resolution, typer.Option(
        help="network: at the training size (the paper's); original: at each image's size."
    )] = Resolution.network,
    out: Annotated[Path | None, typer.Option(help="Folder for per_image.csv and summary.json.")]
    = None,
    save_masks: Annotated[Path | None, typer.Option(help="Also write predicted masks here.")]
    = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 4,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
) -> None:
    """Per-image and mean metrics (mIoU, mDSC, recall, precision, S/E-measure, HD95, ...)."""
    from condseg.evaluation.evaluate import evaluate as run_evaluation
    from condseg.evaluation.evaluate import print_table
    from condseg.inference.model_file import load_model

    with user_errors():
        net = load_model(checkpoint)
        result = run_evaluation(
            net, data, split=split, resolution=resolution.value, out_dir=out,
            save_masks=save_masks, batch_size=batch_size, overwrite=overwrite,
        )
    print_table(result, console)
    if out is not None:
        console.print(f"wrote {out}")


@app.command("predict")
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A model file (.safetensors).")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    overlay: Annotated[bool, typer.Option(help="Also write the mask drawn over the image.")]
    = False,
    maps: Annotated[bool, typer.Option(help="Also write the SID fg/bg/uncertainty maps.")]
    = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 4,
) -> None:
    """Predict masks at each image's original resolution; exit 1 if an input failed."""
    from condseg.inference.model_file import load_model
    from condseg.inference.predict import predict_files

    with user_errors():
        net = load_model(checkpoint)
        report = predict_files(net, images, out, overlay=overlay, maps=maps, overwrite=overwrite,
                               batch_size=batch_size)
    console.print(f"wrote {len(report.written)} files to {out}")
    for path, reason in report.failed:
        console.print(f"[bold red]failed:[/] {path}: {reason}", highlight=False)
    if report.failed:
        raise typer.Exit(1)


@app.command("export")
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A model file (.safetensors).")],
    format: Annotated[ExportFormat, typer.Option(help="Export format.")] = ExportFormat.onnx,
    out: Annotated[Path | None, typer.Option(help="Output file (default: beside the model).")]
    = None,
    size: Annotated[int | None, typer.Option(help="Input side (default: the model file's).")]
    = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (CDFA's fold needs >= 18).")] = 18,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Export a model file to ONNX, checked against PyTorch with onnxruntime."""
    from condseg.inference.export import export_onnx
    from condseg.inference.model_file import load_model

    with user_errors():
        net = load_model(checkpoint)
        report = export_onnx(net, out or checkpoint.with_suffix(f".{format.value}"),
                             input_size=size, opset=opset, overwrite=overwrite)
    console.print(
        f"wrote {report.path} (outputs: {', '.join(report.outputs)}; "
        f"max |onnxruntime - torch| = {report.max_abs_diff:.1e})", highlight=False,
    )


@app.command("benchmark")
def benchmark(
    model: Annotated[str, typer.Option(help="Model name (see `condseg models`).")] = "condseg",
    size: Annotated[int, typer.Option(help="Square input size in pixels.")] = 256,
    batch: Annotated[int, typer.Option(help="Images per batch.")] = 4,
    train: Annotated[bool, typer.Option("--train", help="Also time a full training step.")]
    = False,
    repeats: Annotated[int, typer.Option(help="Timed repeats.")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up repeats.")] = 2,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: usable cores).")]
    = None,
) -> None:
    """Throughput and peak memory of the default path next to the plain float32 NCHW path."""
    from condseg.bench import print_results, run_benchmark

    with user_errors():
        results = run_benchmark(model, size=size, batch=batch, train=train, repeats=repeats,
                                warmup=warmup, threads=threads)
    print_results(results, console)


@app.command("convert-official")
def convert_official(
    checkpoint: Annotated[Path, typer.Argument(help="A .pth state dict of the authors' code.")],
    out: Annotated[Path, typer.Argument(help="Our model file to write (.safetensors).")],
    size: Annotated[int, typer.Option(help="Input size the model was trained at.")] = 256,
) -> None:
    """Import a ConDSeg / Net_0 / ConDSeg-PVT checkpoint trained with the authors' code."""
    from condseg.convert import load_official
    from condseg.inference.model_file import save_model

    with user_errors():
        net = load_official(checkpoint)
        # The authors' code divides by 255 only: no mean/std normalisation.
        path = save_model(out, net, mean=None, std=None, input_size=size)
    console.print(f"{net.arch['name']}: wrote {path}")


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo writes.")]
    = Path("demo-run"),
) -> None:
    """Synthesise data, train both stages of a narrow ConDSeg, evaluate, predict (CPU, <5 min)."""
    from condseg.demo import run_demo

    quiet_lightning()
    with user_errors():
        run_demo(out)
