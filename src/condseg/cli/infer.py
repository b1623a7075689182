"""Commands that run a model file: evaluate, predict, export."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from condseg.cli.options import MaxPixels
from condseg.cli.render import console, user_errors

if TYPE_CHECKING:
    from condseg.inference.engine import Execution
    from condseg.inference.options import InferenceOptions


class Resolution(str, Enum):
    network = "network"
    original = "original"


class ExportFormat(str, Enum):
    onnx = "onnx"


class ProbabilityFormat(str, Enum):
    png = "png"
    npy = "npy"


class InferencePrecision(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


ModelFileArgument = Annotated[Path, typer.Argument(help="A model file (.safetensors).")]
# Inference options shared by evaluate and predict (InferenceOptions).
TTAOption = Annotated[bool, typer.Option(
    "--tta", help="Test-time augmentation: average the probabilities over the four flips.")]
RotationsOption = Annotated[bool, typer.Option(
    "--tta-rotations",
    help="Test-time augmentation over the eight flips and 90° rotations (implies --tta).")]
SlidingOption = Annotated[int | None, typer.Option(
    "--sliding-window", metavar="PIXELS",
    help="Predict an image with a side longer than PIXELS at its own resolution by sliding "
         "windows of the model's input size (MONAI), instead of resizing it.")]
OverlapOption = Annotated[float, typer.Option(
    help="Overlap of neighbouring sliding windows, a fraction of the window.")]
ThresholdOption = Annotated[float, typer.Option(
    help="Mask = probability >= this (binary models; K classes take the argmax).")]
# How the network runs (inference.engine.Execution), shared by evaluate and predict.
DeviceOption = Annotated[str, typer.Option(
    help="auto (a CUDA GPU if torch sees one, else the CPU), cpu, cuda or cuda:N.")]
PrecisionOption = Annotated[InferencePrecision, typer.Option(
    help="Inference precision, the dtype the network computes in. auto: bf16/fp16 autocast "
         "where the hardware runs it natively, else float32.")]
PlainOption = Annotated[bool, typer.Option(
    "--plain", help="The float32 NCHW reference path: no BatchNorm folding, plain kernels.")]
CompileOption = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the network (slow to start; measure before relying on it).")]
BatchSizeOption = Annotated[int, typer.Option(help="Images per forward pass.")]
WorkersOption = Annotated[int | None, typer.Option(
    help="Processes decoding images ahead of the model (default: spare cores, at most 4; "
         "0: none).")]


def _inference_options(
    tta: bool, rotations: bool, sliding_window: int | None, overlap: float
) -> InferenceOptions:
    from condseg.inference.options import InferenceOptions

    return InferenceOptions(tta=tta or rotations, rotations=rotations,
                            sliding_window=sliding_window, overlap=overlap)


def _execution(device: str, precision: InferencePrecision, plain: bool, compile: bool) -> Execution:
    from condseg.inference.engine import Execution

    return Execution(device=device, precision=precision.value, plain=plain, compile=compile)


def evaluate(
    model_file: ModelFileArgument,
    data: Annotated[Path, typer.Option(help="Dataset folder (canonical layout).")],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "val",
    resolution: Annotated[Resolution, typer.Option(
        help="network: at the training size (the paper's); original: at each image's size."
    )] = Resolution.network,
    out: Annotated[Path | None, typer.Option(help="Folder for per_image.csv and summary.json.")]
    = None,
    save_masks: Annotated[Path | None, typer.Option(help="Also write predicted masks here.")]
    = None,
    save_probabilities: Annotated[Path | None, typer.Option(
        help="Also write the probabilities here (<name>_prob.png or .npy).")] = None,
    probability_format: Annotated[ProbabilityFormat, typer.Option(
        help="png: 8-bit grey; npy: float32 arrays.")] = ProbabilityFormat.png,
    threshold: ThresholdOption = 0.5,
    tta: TTAOption = False,
    tta_rotations: RotationsOption = False,
    sliding_window: SlidingOption = None,
    overlap: OverlapOption = 0.25,
    device: DeviceOption = "auto",
    precision: PrecisionOption = InferencePrecision.float32,  # evaluation numbers are the product
    plain: PlainOption = False,
    compile: CompileOption = False,
    batch_size: BatchSizeOption = 4,
    workers: WorkersOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    max_pixels: MaxPixels = None,
) -> None:
    """Per-image and mean metrics (mIoU, mDSC, recall, precision, S/E-measure, HD95, ...)."""
    from condseg.evaluation.evaluate import evaluate as run_evaluation
    from condseg.evaluation.evaluate import print_table
    from condseg.models.model_file import load_model

    with user_errors():
        options = _inference_options(tta, tta_rotations, sliding_window, overlap)
        execution = _execution(device, precision, plain, compile)
        net = load_model(model_file)
        result = run_evaluation(
            net, data, split=split, resolution=resolution.value, out_dir=out,
            save_masks=save_masks, batch_size=batch_size, overwrite=overwrite,
            threshold=threshold, options=options, execution=execution, workers=workers,
            save_probabilities=save_probabilities,
            probability_format=probability_format.value, max_pixels=max_pixels,
            console=console,
        )
    print_table(result, console)
    if out is not None:
        console.print(f"wrote {out}")


def predict(
    model_file: ModelFileArgument,
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    overlay: Annotated[bool, typer.Option(
        help="Also write the mask drawn over the image (K classes: coloured by class).")]
    = False,
    colour: Annotated[bool, typer.Option(
        "--colour", help="Also write <name>_colour.png: each class in its colour (background "
                         "black) with a legend below.")] = False,
    maps: Annotated[bool, typer.Option(
        help="Also write the model's probability maps (ConDSeg: SID fg/bg/uncertainty).")]
    = False,
    probability_format: Annotated[ProbabilityFormat | None, typer.Option(
        help="Also write the mask probability in this format: <name>_prob.png (8-bit) or .npy "
             "(float32; K classes: npy, a (K, H, W) array).")] = None,
    save_probabilities: Annotated[ProbabilityFormat | None, typer.Option(
        hidden=True, help="The former name of --probability-format.")] = None,
    threshold: ThresholdOption = 0.5,
    tta: TTAOption = False,
    tta_rotations: RotationsOption = False,
    sliding_window: SlidingOption = None,
    overlap: OverlapOption = 0.25,
    device: DeviceOption = "auto",
    precision: PrecisionOption = InferencePrecision.auto,
    plain: PlainOption = False,
    compile: CompileOption = False,
    batch_size: BatchSizeOption = 4,
    workers: WorkersOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    max_pixels: MaxPixels = None,
) -> None:
    """Predict masks at each image's original resolution (0/255; K classes: the class ids
    0..K-1); exit 1 if an input failed. Entries of a folder that are not image files (hidden,
    subfolders, other types) are listed as skipped."""
    from rich.markup import escape

    from condseg.inference.predict import predict_files, report_lines
    from condseg.models.model_file import load_model

    with user_errors():
        options = _inference_options(tta, tta_rotations, sliding_window, overlap)
        execution = _execution(device, precision, plain, compile)
        net = load_model(model_file)
        fmt = probability_format or save_probabilities  # the former spelling still works
        report = predict_files(
            net, images, out, overlay=overlay, colour=colour, maps=maps, overwrite=overwrite,
            batch_size=batch_size, threshold=threshold, options=options, execution=execution,
            workers=workers,
            probability_format=fmt.value if fmt else None,
            max_pixels=max_pixels, console=console,
        )
    console.print(f"wrote {len(report.written)} files to {out}")
    for kind, line in report_lines(report):
        style = "bold red" if kind == "failed" else "yellow"
        console.print(f"[{style}]{kind}:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if report.failed:
        raise typer.Exit(1)


def export(
    model_file: ModelFileArgument,
    format: Annotated[ExportFormat, typer.Option(help="Export format.")] = ExportFormat.onnx,
    out: Annotated[Path | None, typer.Option(help="Output file (default: beside the model).")]
    = None,
    size: Annotated[int | None, typer.Option(help="Input side (default: the model file's).")]
    = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (CDFA's fold needs >= 18).")] = 18,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Export a model file to ONNX, checked against PyTorch with onnxruntime."""
    from condseg.inference.export import export_onnx, how_to_run
    from condseg.models.model_file import load_model

    with user_errors():
        net = load_model(model_file)
        report = export_onnx(net, out or model_file.with_suffix(f".{format.value}"),
                             size=size, opset=opset, overwrite=overwrite)
    console.print(
        f"wrote {report.path} (outputs: {', '.join(report.outputs)}; "
        f"max |onnxruntime - torch| = {report.max_abs_diff:.1e}); its metadata_props hold "
        f"input_size, mean, std and {'threshold' if net.num_classes == 1 else 'classes'}. Run "
        "it with onnxruntime:", highlight=False,
        soft_wrap=True,
    )
    console.print(how_to_run(report.path), highlight=False, markup=False, soft_wrap=True)
