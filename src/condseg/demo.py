"""``condseg demo``: the whole pipeline on embedded synthetic data, offline, on a CPU, in minutes.

Synthesise a dataset, train both stages of the ``demo`` preset (a narrow ConDSeg trained from
scratch), evaluate the final model on the validation split, predict a few validation images with
overlays and SID maps, and say where everything went.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from condseg.config import load_config
from condseg.data.dataset import find_pair, read_mask, read_split
from condseg.data.synthetic import synthesize
from condseg.errors import OutputExistsError
from condseg.evaluation.evaluate import EvaluationResult, evaluate
from condseg.evaluation.names import display_name, percent
from condseg.inference.predict import PredictReport, predict_files
from condseg.models.model_file import load_model
from condseg.training import TrainResult, train


@dataclass
class DemoResult:
    out_dir: Path
    training: TrainResult
    evaluation: EvaluationResult
    predictions: PredictReport
    trivial_mdsc: float  # the mean Dice of the best constant predictor (all foreground)
    seconds: float

    @property
    def mdsc(self) -> float:
        return float(self.evaluation.summary["dice"]["mean"])

    @property
    def miou(self) -> float:
        return float(self.evaluation.summary["iou"]["mean"])


def trivial_mdsc(data_root: Path, split: str = "val") -> float:
    """Mean Dice of predicting foreground everywhere: what learning has to beat (predicting
    background everywhere scores 0 on every image with a lesion)."""
    scores = []
    for name in read_split(data_root, split):
        gt = read_mask(find_pair(data_root, name)[1])
        scores.append(2 * gt.sum() / (gt.sum() + gt.size) if gt.any() else 0.0)
    return float(np.mean(scores))


def run_demo(
    out_dir: str | Path = "demo-run",
    *,
    overrides: list[str] | tuple[str, ...] = (),
    n_train: int = 48,
    n_val: int = 16,
    n_predict: int = 4,
    seed: int = 0,
    console: Console | None = None,
) -> DemoResult:
    """Run the demo into ``out_dir`` (must be new or empty): data/, run/, evaluation/,
    predictions/. ``overrides`` apply to the ``demo`` preset (``key=value``)."""
    console = console or Console(soft_wrap=True)
    start = time.perf_counter()
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()):
        raise OutputExistsError(f"{out} is not empty; give the demo a new folder (--out DIR) or "
                              "delete the previous demo's folder")
    config = load_config("demo", overrides)
    console.rule("condseg demo: synthetic data")
    data = synthesize(out / "data", n_train=n_train, n_val=n_val, size=config.data.size,
                      seed=seed)
    console.print(f"{n_train} training and {n_val} validation images in {data}")
    console.rule("training: stage 1 (Net_0 + Consistency Reinforcement), stage 2 (ConDSeg)")
    training = train(config, data, out / "run", console=console)
    console.rule("evaluation and prediction")
    model = load_model(training.model_file)
    evaluation = evaluate(model, data, split="val", out_dir=out / "evaluation")
    names = read_split(data, "val")[:n_predict]
    predictions = predict_files(model, [find_pair(data, n)[0] for n in names],
                                out / "predictions", overlay=True, maps=True)
    result = DemoResult(out, training, evaluation, predictions, trivial_mdsc(data),
                        time.perf_counter() - start)
    _print_summary(result, console)
    return result


DSC_IOU = f"{display_name('dice')} / {display_name('iou')}"


def _print_summary(result: DemoResult, console: Console) -> None:
    table = Table(title=f"condseg demo finished in {result.seconds:.0f} s", show_header=False)
    table.add_row(f"validation {DSC_IOU} (final model)",
                  f"{percent(result.mdsc)}% / {percent(result.miou)}%")
    for n, metrics in result.training.best_metrics.items():
        table.add_row(f"best val {DSC_IOU}, {n}",
                      f"{percent(metrics['mdsc'])}% / {percent(metrics['miou'])}% "
                      f"(epoch {metrics['epoch']})")
    table.add_row(f"trivial predictor {display_name('dice')} (all foreground)",
                  f"{percent(result.trivial_mdsc)}%")
    run = result.training.run_dir
    table.add_row("synthetic dataset", str(result.out_dir / "data"))
    table.add_row("run (config, checkpoints, logs, curves)", str(run))
    table.add_row("curves", ", ".join(str(run / n / "curves.png")
                                      for n in result.training.model_files))
    table.add_row("model file", str(result.training.model_file))
    table.add_row("evaluation (per-image CSV, summary JSON)", str(result.out_dir / "evaluation"))
    table.add_row("predictions (masks, overlays, SID maps)", str(result.out_dir / "predictions"))
    console.print(table)
