"""The ``condseg`` command: parses arguments, then calls the library (nothing else lives here).

Library modules are imported inside each command so that ``condseg --help`` starts quickly.
Errors a user can fix (``condseg.errors.CondsegError``: bad data, a missing file, a wrong option)
are printed as one line and exit with status 2; anything else is a bug and keeps its traceback.
``predict`` exits 1 when some inputs could not be used.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from condseg.config import RunConfig
    from condseg.inference.engine import Execution
    from condseg.inference.options import InferenceOptions

app = typer.Typer(
    help="ConDSeg and related methods for 2-D binary medical image segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
)
data_app = typer.Typer(help="Prepare, check and synthesise datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(soft_wrap=True)  # whole lines: a path in a log file is never broken


class Resolution(str, Enum):
    network = "network"
    original = "original"


class ExportFormat(str, Enum):
    onnx = "onnx"


class ProbabilityFormat(str, Enum):
    png = "png"
    npy = "npy"


class Precision(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


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
ThresholdOption = Annotated[float, typer.Option(help="Mask = probability >= this.")]
# How the network runs (inference.engine.Execution), shared by evaluate and predict.
DeviceOption = Annotated[str, typer.Option(
    help="auto (a CUDA GPU if torch sees one, else the CPU), cpu, cuda or cuda:N.")]
PrecisionOption = Annotated[Precision, typer.Option(
    help="auto: bf16/fp16 autocast where the hardware runs it natively, else float32.")]
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


def _execution(device: str, precision: Precision, plain: bool, compile: bool) -> Execution:
    from condseg.inference.engine import Execution

    return Execution(device=device, precision=precision.value, plain=plain, compile=compile)


def quiet_lightning() -> None:
    from condseg.training.logs import quiet_lightning as quiet

    quiet()


def _new_run_dir(name: str) -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>``: a run started without --out never meets another
    run's folder (and its resume advice)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = Path("runs") / f"{name}-{stamp}", 2
    while path.exists():  # started within the same second
        path, n = Path("runs") / f"{name}-{stamp}-{n}", n + 1
    console.print(f"run directory (default --out): {path}", highlight=False)
    return path


def _run_name(config: str | None, cfg: RunConfig) -> str:
    """The preset or config file's name, or the method's when it is the default preset."""
    stem = Path(config or "default").stem
    return cfg.method if stem == "default" else stem


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's errors about the user's input or machine (a full disk, a read-only
    folder: an OSError of :data:`~condseg.outputs.ENVIRONMENT_ERRNOS`) into one clear line and
    exit code 2, and an interruption (Ctrl-C, SIGTERM) into one line and exit code 130."""
    from rich.markup import escape

    from condseg.errors import CondsegError
    from condseg.interrupt import Interrupted, interruptible
    from condseg.outputs import ENVIRONMENT_ERRNOS, describe

    def fail(message: str, code: int) -> typer.Exit:
        console.print(message, highlight=False, soft_wrap=True)
        return typer.Exit(code)

    try:
        with interruptible():
            yield
    except CondsegError as error:
        raise fail(f"[bold red]error:[/] {escape(str(error))}", 2) from error
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRNOS:
            raise  # a bug (a file we expected is missing, ...): keep its traceback
        raise fail(f"[bold red]error:[/] {escape(describe(error))}", 2) from error
    except Interrupted as stop:
        raise fail(f"[bold red]interrupted:[/] {escape(stop.summary())}", 130) from None


def _print_version(value: bool) -> None:
    if value:
        from condseg import __version__

        console.print(f"condseg {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option(
        "--version", "-V", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """ConDSeg and related methods for 2-D binary medical image segmentation."""


@app.command("models")
def models() -> None:
    """List the available model names, with the method stages that train each."""
    from condseg.config import load_config
    from condseg.models.registry import describe_models
    from condseg.recipes import list_methods

    trained_by: dict[str, list[str]] = {}
    for method in list_methods():
        cfg = load_config("default", [f"method={method}"])
        for stage, s in cfg.stages.items():
            model = s.model.name if s.model is not None else cfg.model.name
            trained_by.setdefault(model, []).append(f"{method}/{stage}")
    for name, description in describe_models().items():
        stages = trained_by.get(name)
        suffix = f" (trained by {', '.join(stages)})" if stages else ""
        console.print(f"[bold]{name}[/]  {description}{suffix}", soft_wrap=True)


@app.command("methods")
def methods() -> None:
    """List the training methods with their stages (model, loss, optimiser, schedule, epochs)."""
    from condseg.config import load_config
    from condseg.recipes import METHODS

    for name, description in METHODS.describe().items():
        cfg = load_config("default", [f"method={name}"])
        console.print(f"[bold]{name}[/]  {description}", soft_wrap=True)
        for stage, s in cfg.stages.items():
            model = s.model.name if s.model is not None else cfg.model.name
            init = ", ".join(f"{part} from {src}" for part, src in s.init.items() if src)
            console.print(
                f"    {stage}: {model}{f' ({init})' if init else ''}; loss {s.loss.name}; "
                f"{s.optimizer.name} lr {s.optimizer.lr:g}"
                f"{f' (encoder {s.optimizer.encoder_lr:g})' if s.optimizer.encoder_lr else ''}; "
                f"{s.schedule.name}; {s.max_epochs} epochs", highlight=False, soft_wrap=True)


MaxPixels = Annotated[int | None, typer.Option(
    help="Refuse images of more pixels than this (default 50,000,000), read from the header.")]


@data_app.command("prepare")
def data_prepare(
    dataset: Annotated[str, typer.Argument(help="kvasir-seg, kvasir-sessile, glas, isic2016, "
                                                "isic2017, cvc-clinicdb, busi, or folder.")],
    paths: Annotated[list[Path], typer.Argument(
        help="RAW OUT: the release as unpacked and a new folder; for folder: IMAGES MASKS OUT.",
        show_default=False)],
    images: Annotated[Path | None, typer.Option(
        help="Release: the folder holding the images, relative to RAW.")] = None,
    masks: Annotated[Path | None, typer.Option(
        help="Release: the folder holding the masks, relative to RAW.")] = None,
    swap: Annotated[bool, typer.Option(help="Exchange images and masks.")] = False,
    split: Annotated[str | None, typer.Option(
        help="folder: train,val[,test] fractions (default 0.8,0.1,0.1).")] = None,
    folds: Annotated[int | None, typer.Option(
        help="folder: K folds in OUT/folds/<k>/ instead of --split.")] = None,
    test: Annotated[float | None, typer.Option(
        help="folder with --folds: fraction held out of all folds as test.txt.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split when none is shipped.")] = 0,
    link: Annotated[bool, typer.Option(help="Hard-link unchanged images and masks.")] = False,
    max_pixels: MaxPixels = None,
) -> None:
    """Convert a public release (DATASET RAW OUT) or a folder of images and a folder of masks
    (folder IMAGES MASKS OUT) into the canonical layout with a recorded split."""
    import json

    from rich.markup import escape

    from condseg.data.dataset import DataError
    from condseg.data.prepare import prepare, prepare_folder

    with user_errors():
        if len(paths) != (3 if dataset == "folder" else 2):
            usage = "folder IMAGES MASKS OUT" if dataset == "folder" else f"{dataset} RAW OUT"
            raise DataError(f"expected `condseg data prepare {usage}`, got {len(paths)} paths")
        if dataset == "folder":
            if images or masks:
                raise DataError("--images/--masks are for releases; folder takes IMAGES MASKS")
            fractions = _fractions(split) if split else None
            path = prepare_folder(*paths, split=fractions, folds=folds, test=test, seed=seed,
                                  link=link, swap=swap, max_pixels=max_pixels)
        else:
            if split or folds or test is not None:
                raise DataError("--split/--folds/--test are for `data prepare folder`; "
                                f"{dataset} has its own split")
            path = prepare(dataset, *paths, seed=seed, link=link, images=images, masks=masks,
                           swap=swap, max_pixels=max_pixels)
    info = json.loads((path / "split_info.json").read_text())
    counts = ", ".join(f"{s} {n}" for s, n in info["counts"].items() if "/" not in s)
    lines = [f"wrote {escape(str(path))} ({counts}; split: {escape(info['source'])})"]
    if info.get("mask_suffixes"):
        found = ", ".join(f"{s} {n}" for s, n in info["mask_suffixes"].items())
        lines.append(f"masks paired by name suffix: {escape(found)}")
    if info["not_converted"]:
        lines.append(f"[yellow]{info['not_converted']} files not converted[/] (unpaired, "
                     "unreadable, of another size than their image, or not images): see "
                     f"{escape(str(path / info['not_converted_list']))}")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _fractions(text: str) -> list[float]:
    from condseg.data.dataset import DataError

    try:
        return [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise DataError(f"--split takes fractions like 0.8,0.1,0.1, got {text!r}") from exc


@data_app.command("check")
def data_check(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder in the canonical layout.")],
    split: Annotated[list[str] | None, typer.Option(
        help="Split(s) to check (default: train, val, and test when present)."
    )] = None,
    max_pixels: MaxPixels = None,
) -> None:
    """Verify every listed image and mask; exit 1 when there are errors."""
    from condseg.data.check import check_dataset

    with user_errors():
        report = check_dataset(dataset, splits=split or None, max_pixels=max_pixels)
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
    method: Annotated[str | None, typer.Option(
        help="Method (see `condseg methods`; same as method=...).")] = None,
    model: Annotated[str | None, typer.Option(
        help="The run's model within the method, e.g. condseg-pvt (same as model.name=...).")]
    = None,
    stage: Annotated[str, typer.Option(
        help="'all' (the config's train_stages), or one stage by name or number.")] = "all",
    out: Annotated[Path | None, typer.Option(
        help="Run directory (default runs/<preset or method>-<date>-<time>).")] = None,
    resume: Annotated[Path | None, typer.Option(
        help="Continue the run in this folder, with its own config.yaml.")] = None,
    precision: Annotated[str | None, typer.Option(
        help="auto (bf16-mixed where the hardware runs bf16 natively, else 32), 32, bf16-mixed "
             "or 16-mixed (same as precision=...).")] = None,
    epochs: Annotated[int | None, typer.Option(
        min=1, help="max_epochs of every stage trained (all, or the one --stage names); "
                    "same as stages.NAME.max_epochs=N for each.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same as seed=...).")] = None,
    fold: Annotated[int | None, typer.Option(
        help="Train on fold K of a dataset prepared with folds (DATA/folds/K/train.txt, "
             "val.txt).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key=value config overrides, e.g. stages.stage2.optimizer.lr=3e-4.")] = None,
) -> None:
    """Train a method's stages (default: ConDSeg's two-stage recipe)."""
    from condseg.errors import CondsegError
    from condseg.training import train as run_training
    from condseg.training.cv import fold_overrides
    from condseg.training.run import select_stages

    quiet_lightning()
    with user_errors():
        if resume is not None and out is not None and out.resolve() != resume.resolve():
            raise CondsegError(f"--resume {resume} and --out {out} name different run folders; "
                               "give only --resume RUN")
        if resume is not None and not (resume / "config.yaml").is_file():
            raise CondsegError(f"{resume} is not a run folder (no config.yaml); pass the --out "
                               "folder of the run to continue")
        extra = list(overrides or []) + (fold_overrides(fold) if fold is not None else [])
        cfg = _run_config(config, resume or Path("runs"), resume is not None, extra,
                          method=method, model=model, precision=precision, seed=seed)
        if epochs is not None:  # on the stages this call trains; key=value options still refine
            scaled = [f"stages.{name}.max_epochs={epochs}" for name in select_stages(cfg, stage)]
            cfg = _run_config(config, resume or Path("runs"), resume is not None, scaled + extra,
                              method=method, model=model, precision=precision, seed=seed)
        suffix = f"-fold{fold}" if fold is not None else ""
        run_dir = resume or out or _new_run_dir(_run_name(config, cfg) + suffix)
        result = run_training(cfg, data, run_dir, stage=stage, resume=resume is not None)
    console.print(f"run directory: {result.run_dir}; model file: {result.model_file}",
                  highlight=False)


def _run_config(
    config: str | None, run_dir: Path, resume: bool, overrides: list[str], **options: object
) -> RunConfig:
    """The preset or file (default: the run's own config.yaml with --resume, else 'default')
    with the overrides and the command's shorthand options (``--method`` is ``method=``)."""
    from condseg.config import load_config

    if config is None:
        previous = run_dir / "config.yaml"
        config = str(previous) if resume and previous.is_file() else "default"
    keys = {"method": "method", "model": "model.name", "precision": "precision", "seed": "seed"}
    shorthand = [f"{keys[k]}={v}" for k, v in options.items() if v is not None]
    return load_config(config, shorthand + overrides)  # key=value options refine a --model


@app.command("cv")
def cv(
    data: Annotated[Path | None, typer.Option(
        help="Dataset folder with folds (DATA/folds/K/train.txt, val.txt); optional when the "
             "config sets data.root.")] = None,
    config: Annotated[str | None, typer.Option(help=(
        "Preset name or YAML file. Default: the cross-validation's own config.yaml when --out "
        "has one, else the 'default' preset."))] = None,
    method: Annotated[str | None, typer.Option(help="Method (same as method=...).")] = None,
    model: Annotated[str | None, typer.Option(
        help="The run's model within the method (same as model.name=...).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Cross-validation folder (default runs/<preset or method>-cv-<date>-<time>); "
             "give it to continue or aggregate a cross-validation.")] = None,
    fold: Annotated[list[int] | None, typer.Option(
        help="Train only this fold (repeatable): one job's share. Without it every fold is "
             "trained (finished ones are reused), then aggregated and ensembled.")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="Comma-separated seeds, e.g. 0,1,2: one run per seed (and fold).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue unfinished runs.")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace the aggregate, the ensemble and its test evaluation.")] = False,
    precision: Annotated[str | None, typer.Option(
        help="auto (bf16-mixed where the hardware runs bf16 natively, else 32), 32, bf16-mixed "
             "or 16-mixed (same as precision=...).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key=value config overrides, e.g. stages.stage2.max_epochs=100.")] = None,
) -> None:
    """k-fold cross-validation (or multi-seed runs): per-run validation results, their mean ±
    std, and an ensemble model (mean probability) for evaluate and predict."""
    from condseg.training.cv import cross_validate

    quiet_lightning()
    with user_errors():
        seed_list = _int_list(seeds, "--seeds") if seeds else None
        cfg = _run_config(config, out or Path("runs"), out is not None, list(overrides or []),
                          method=method, model=model, precision=precision)
        cv_dir = out or _new_run_dir(f"{_run_name(config, cfg)}-cv")
        result = cross_validate(cfg, data, cv_dir, folds=fold or None, seeds=seed_list,
                                resume=resume, overwrite=overwrite, console=console)
    if result.ensemble_file is not None:
        console.print(f"cross-validation folder: {result.cv_dir}; ensemble: "
                      f"{result.ensemble_file}", highlight=False)


def _int_list(text: str, option: str) -> list[int]:
    from condseg.errors import CondsegError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise CondsegError(f"{option} takes comma-separated integers, e.g. 0,1,2; got "
                           f"{text!r}") from error


@app.command("presets")
def presets() -> None:
    """List the packaged configuration presets with their method and stages."""
    from condseg.config import list_presets, load_config

    for name in list_presets():
        cfg = load_config(name)
        console.print(f"[bold]{name}[/]  {cfg.description} (method {cfg.method}, stages "
                      f"{', '.join(cfg.stages_to_train())})", highlight=False, soft_wrap=True)


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
    precision: PrecisionOption = Precision.float32,  # evaluation numbers are the product
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
        net = load_model(checkpoint)
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


@app.command("predict")
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A model file (.safetensors).")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    overlay: Annotated[bool, typer.Option(help="Also write the mask drawn over the image.")]
    = False,
    maps: Annotated[bool, typer.Option(
        help="Also write the model's probability maps (ConDSeg: SID fg/bg/uncertainty).")]
    = False,
    save_probabilities: Annotated[ProbabilityFormat | None, typer.Option(
        help="Also write the mask probability: <name>_prob.png (8-bit) or .npy (float32).")]
    = None,
    threshold: ThresholdOption = 0.5,
    tta: TTAOption = False,
    tta_rotations: RotationsOption = False,
    sliding_window: SlidingOption = None,
    overlap: OverlapOption = 0.25,
    device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.auto,
    plain: PlainOption = False,
    compile: CompileOption = False,
    batch_size: BatchSizeOption = 4,
    workers: WorkersOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    max_pixels: MaxPixels = None,
) -> None:
    """Predict masks at each image's original resolution; exit 1 if an input failed. Entries
    of a folder that are not image files (hidden, subfolders, other types) are listed as
    skipped."""
    from condseg.inference.predict import predict_files
    from condseg.models.model_file import load_model

    with user_errors():
        options = _inference_options(tta, tta_rotations, sliding_window, overlap)
        execution = _execution(device, precision, plain, compile)
        net = load_model(checkpoint)
        report = predict_files(
            net, images, out, overlay=overlay, maps=maps, overwrite=overwrite,
            batch_size=batch_size, threshold=threshold, options=options, execution=execution,
            workers=workers,
            save_probabilities=save_probabilities.value if save_probabilities else None,
            max_pixels=max_pixels, console=console,
        )
    console.print(f"wrote {len(report.written)} files to {out}")
    from rich.markup import escape

    from condseg.inference.predict import report_lines

    for kind, line in report_lines(report):
        style = "bold red" if kind == "failed" else "yellow"
        console.print(f"[{style}]{kind}:[/] {escape(line)}", highlight=False, soft_wrap=True)
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
    from condseg.inference.export import export_onnx, how_to_run
    from condseg.models.model_file import load_model

    with user_errors():
        net = load_model(checkpoint)
        report = export_onnx(net, out or checkpoint.with_suffix(f".{format.value}"),
                             size=size, opset=opset, overwrite=overwrite)
    console.print(
        f"wrote {report.path} (outputs: {', '.join(report.outputs)}; "
        f"max |onnxruntime - torch| = {report.max_abs_diff:.1e}); its metadata_props hold "
        "input_size, mean, std and threshold. Run it with onnxruntime:", highlight=False,
        soft_wrap=True,
    )
    console.print(how_to_run(report.path), highlight=False, markup=False, soft_wrap=True)


@app.command("benchmark")
def benchmark(
    model: Annotated[str, typer.Option(
        help="Model name (see `condseg models`), or all: every registered model.")] = "condseg",
    size: Annotated[int, typer.Option(help="Square input size in pixels.")] = 256,
    batch: Annotated[int, typer.Option(help="Images per batch.")] = 4,
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
        report = benchmark_models(model, size=size, batch=batch, train=train, repeats=repeats,
                                  warmup=warmup, threads=threads, rounds=rounds)
    print_report(report, console)
    if json_file is not None:
        console.print(f"wrote {write_json(report, json_file)}", highlight=False)


@app.command("convert-official")
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


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo writes.")]
    = Path("demo-run"),
) -> None:
    """Synthesise data, train both stages of a narrow ConDSeg, evaluate, predict (CPU, <5 min)."""
    from condseg.demo import run_demo

    quiet_lightning()
    with user_errors():
        run_demo(out, console=console)


@app.command("compare")
def compare(
    inputs: Annotated[list[Path], typer.Argument(
        help="Run folders (their RUN/evaluation/*/) or evaluation folders (summary.json + "
             "per_image.csv); the first is the reference for the statistics."
    )],
    label: Annotated[list[str] | None, typer.Option(
        help="Row label of each input, in order (repeat once per input)."
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
) -> None:
    """Methods side by side as in the paper's Table 1, with paired per-image Dice statistics."""
    from condseg.evaluation.compare import compare as run_compare

    with user_errors():
        run_compare(inputs, labels=label, out_dir=out, figure_dir=figure, images=images,
                    overwrite=overwrite, console=console)


if __name__ == "__main__":
    app()
