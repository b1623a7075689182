"""Issue 24, point 6: compare and study on multi-class evaluations.

Evaluation folders are written through condseg.records with the K-class columns of the
contract (``dice`` ... the foreground means, ``dice/<class>`` ... per class, ``classes`` in
summary.json), so the tables are checked against known numbers: Table 1 gains each class's
Dice, the paired tests are on the per-image foreground-mean Dice, evaluations of other classes
(a binary one included) are refused, and predictions.png colours each class with a legend.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from condseg import records
from condseg.cli import app
from condseg.errors import CompareError
from condseg.evaluation.compare import compare
from condseg.evaluation.compare import figures as compare_figures
from condseg.evaluation.compare.figures import class_dice
from condseg.evaluation.compare.result import CLASSES_NOTE
from condseg.evaluation.metrics import METRIC_NAMES, class_metric_names, summarize
from condseg.evaluation.names import TABLE_METRICS
from condseg.evaluation.stats import paired_test
from condseg.layout import EvalDir
from condseg.viz import class_colours

runner = CliRunner()
CLASSES = ("background", "rnfl", "gcipl", "choroid")
NAMES = [f"img{i}" for i in range(6)]
PER_CLASS = ("dice", "iou", "recall", "precision", "hd95", "assd")
# Per image, the Dice of rnfl, gcipl, choroid (None: the class is in neither mask).
REF = [(0.5, 0.6, 0.7), (0.4, None, 0.8), (0.5, 0.5, 0.5), (0.6, 0.7, None), (0.3, 0.4, 0.5),
       (0.5, 0.6, 0.7)]
RUN = [(0.6, 0.6, 0.9), (0.5, None, 0.8), (0.4, 0.6, 0.5), (0.9, 0.8, None), (0.4, 0.5, 0.7),
       (0.5, 0.7, 0.8)]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def write_classes_evaluation(
    folder: Path, scores: list[tuple[float | None, ...]], *, classes: tuple[str, ...] = CLASSES,
    names: list[str] = NAMES, data_root: str = "/data/layers", split: str = "val",
    model: str = "unet", **protocol: object,
) -> Path:
    """An evaluation as evaluate writes a K-class one (contract): per class Dice as given
    (IoU = Dice/(2 - Dice), recall = precision = Dice, no distances), the foreground means over
    the classes present, pixel accuracy, and ``classes`` in summary.json."""
    foreground = classes[1:]
    rows = []
    for name, dice in zip(names, scores, strict=True):
        row: dict[str, object] = {"name": name}
        for cls, d in zip(foreground, dice, strict=True):
            iou = None if d is None else d / (2 - d)
            row.update({f"dice/{cls}": d, f"iou/{cls}": iou, f"recall/{cls}": d,
                        f"precision/{cls}": d, f"hd95/{cls}": None, f"assd/{cls}": None})
        for metric in PER_CLASS:
            row[metric] = _mean([row[f"{metric}/{cls}"] for cls in foreground])  # type: ignore[misc]
        row["accuracy"] = 0.9
        rows.append(row)
    columns = class_metric_names(classes)
    assert set(columns) == {k for k in rows[0] if k != "name"}  # the contract's columns
    records.write_evaluation(
        EvalDir(folder), columns, rows, summarize(rows, columns),
        {"data_root": data_root, "split": split, "resolution": "network",
         "input_size": [64, 64], "n_images": len(rows), "model": model, **protocol},
        classes=classes)
    return folder


def write_binary_evaluation(folder: Path, dice: float = 0.5) -> Path:
    rows = [{"name": n, **dict.fromkeys(METRIC_NAMES, dice)} for n in NAMES]
    records.write_evaluation(EvalDir(folder), METRIC_NAMES, rows, summarize(rows),
                             {"data_root": "/data/layers", "split": "val", "model": "condseg"})
    return folder


def class_mean(scores: list[tuple[float | None, ...]], k: int) -> float:
    return float(np.mean([s[k] for s in scores if s[k] is not None]))


@pytest.fixture
def two(tmp_path: Path) -> list[Path]:
    return [write_classes_evaluation(tmp_path / "ref", REF),
            write_classes_evaluation(tmp_path / "run", RUN, model="m2snet")]


# --------------------------------------------------------------------------- the table


def test_the_table_has_each_class_dice_beside_the_foreground_means(
    two: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    console = Console(record=True, width=300, file=io.StringIO())
    result = compare(two, out_dir=out, console=console)
    per_class = tuple(f"dice/{c}" for c in CLASSES[1:])
    assert result.classes == CLASSES
    assert result.metrics == (*TABLE_METRICS, *per_class)
    column = result.columns[0]
    for label, scores in (("unet", REF), ("m2snet", RUN)):
        for k, metric in enumerate(per_class):  # an absent class is left out of its mean
            assert result.value(label, column, metric) == pytest.approx(
                100 * class_mean(scores, k))
        means = [_mean(list(s)) for s in scores]
        assert result.value(label, column, "dice") == pytest.approx(100 * np.mean(means))

    shown = ["mIoU", "mDSC", "Recall", "Precision", "mDSC rnfl", "mDSC gcipl", "mDSC choroid"]
    markdown = (out / "compare.md").read_text()
    assert markdown.splitlines()[0] == "| " + " | ".join(
        ["Method", *(f"layers/val {name}" for name in shown)]) + " |"
    assert CLASSES_NOTE in markdown and "binary only" in markdown
    for binary_only in ("S-measure", "E-measure", "weighted F", "Specificity", "MAE"):
        assert f"layers/val {binary_only}" not in markdown
    # the best of each class column is bold: the run is better on every class
    run_row = next(line for line in markdown.splitlines() if line.startswith("| m2snet"))
    assert run_row.count("**") == 2 * len(shown)

    with (out / "compare.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["method", "source", *(f"layers/val {name}" for name in shown)]
    assert float(rows[2][-3]) == pytest.approx(100 * class_mean(RUN, 0), abs=1e-4)
    latex = (out / "compare.tex").read_text()
    assert "\\multicolumn{7}{c}{layers/val}" in latex and "mDSC choroid" in latex
    assert "binary only" in latex
    printed = console.export_text()
    assert "mDSC rnfl" in printed and "binary only" in printed


def test_the_paired_tests_are_on_the_per_image_foreground_mean_dice(two: list[Path]) -> None:
    result = compare(two)
    (row,) = result.stats
    expected = paired_test([_mean(list(s)) for s in RUN], [_mean(list(s)) for s in REF])
    assert row.test == expected
    # not the mean of the per-class differences (those pool the classes, not the images)
    class_diffs = [r - b for rs, bs in zip(RUN, REF, strict=True)
                   for r, b in zip(rs, bs, strict=True) if r is not None]
    assert row.test.mean_diff != pytest.approx(float(np.mean(class_diffs)))
    from condseg.evaluation.compare.tables import stats_table

    assert "foreground-mean Dice" in str(stats_table(result).title)


def test_runs_of_one_method_pool_each_class(tmp_path: Path) -> None:
    inputs = [write_classes_evaluation(tmp_path / "a", REF),
              write_classes_evaluation(tmp_path / "b", RUN)]
    result = compare(inputs, labels=["unet", "unet"], pool=True, out_dir=tmp_path / "out")
    column = result.columns[0]
    for k, cls in enumerate(CLASSES[1:]):
        means = [class_mean(REF, k), class_mean(RUN, k)]
        assert result.value("unet", column, f"dice/{cls}") == pytest.approx(100 * np.mean(means))
        assert result.spread("unet", column, f"dice/{cls}") == pytest.approx(100 * np.std(means))
    assert result.classes == CLASSES
    header = (tmp_path / "out" / "compare.csv").read_text().splitlines()[0]
    assert "layers/val mDSC gcipl,layers/val mDSC gcipl std" in header


def test_binary_comparisons_are_as_before(tmp_path: Path) -> None:
    inputs = [write_binary_evaluation(tmp_path / "a", 0.5),
              write_binary_evaluation(tmp_path / "b", 0.6)]
    result = compare(inputs, out_dir=tmp_path / "out")
    assert result.classes is None and result.metrics == TABLE_METRICS
    assert "classes" not in json.loads((inputs[0] / "summary.json").read_text())
    markdown = (tmp_path / "out" / "compare.md").read_text()
    assert CLASSES_NOTE not in markdown and "DSC" not in markdown.replace("mDSC", "")
    assert "foreground" not in (tmp_path / "out" / "compare.tex").read_text()


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("other", [
    ("background", "rnfl", "gcipl"),  # another K
    ("background", "rnfl", "gcipl", "rpe"),  # the same K, another class
    ("background", "gcipl", "rnfl", "choroid"),  # the same classes, other ids
])
def test_evaluations_of_other_classes_are_refused_in_one_line(
    two: list[Path], tmp_path: Path, other: tuple[str, ...]
) -> None:
    scores = [tuple(0.5 for _ in other[1:])] * len(NAMES)
    odd = write_classes_evaluation(tmp_path / "odd", scores, classes=other, model="chnet")
    out = tmp_path / "out"
    for inputs in ([*two, odd], [odd, *two]):
        with pytest.raises(CompareError) as caught:
            compare(inputs, out_dir=out)
        message = str(caught.value)
        assert "\n" not in message and ", ".join(other) in message
        assert ", ".join(CLASSES) in message and str(odd) in message
    assert not out.exists()  # refused before anything is written


def test_binary_and_multi_class_evaluations_are_refused_in_one_line(
    two: list[Path], tmp_path: Path
) -> None:
    binary = write_binary_evaluation(tmp_path / "binary")
    out = tmp_path / "out"
    for inputs in ([binary, *two], [*two, binary]):
        with pytest.raises(CompareError, match="binary and multi-class evaluations are not "
                                               "compared") as caught:
            compare(inputs, out_dir=out)
        assert f"{binary} is a binary evaluation" in str(caught.value)
        assert "\n" not in str(caught.value)
    result = runner.invoke(app, ["compare", str(binary), str(two[0]), "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert not out.exists()


def test_damaged_classes_are_one_line_naming_the_file(tmp_path: Path) -> None:
    folder = write_classes_evaluation(tmp_path / "ref", REF)
    summary = json.loads((folder / "summary.json").read_text())
    for damaged in ("rnfl", ["background"], ["background", 3]):
        (folder / "summary.json").write_text(json.dumps({**summary, "classes": damaged}))
        with pytest.raises(CompareError, match=r"summary\.json is damaged: its classes") as caught:
            compare([folder])
        assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- figures


def test_the_caption_dice_is_the_foreground_mean_of_the_classes_present() -> None:
    truth = np.array([[0, 1, 1, 2], [0, 1, 255, 2]], np.uint8)
    mask = np.array([[0, 1, 2, 2], [0, 1, 1, 0]], np.uint8)
    # rnfl: tp 2, fp 0 (the ignored pixel counts for nothing), fn 1 -> 4/5; gcipl: tp 1, fp 1,
    # fn 1 -> 1/2; choroid in neither: left out, not 1
    assert class_dice(mask, truth, 4) == pytest.approx((4 / 5 + 1 / 2) / 2)
    assert class_dice(np.zeros_like(mask), np.zeros_like(truth), 4) is None
    assert class_dice(truth, truth, 4) == 1.0


@pytest.fixture
def layers(tmp_path: Path) -> Path:
    from condseg.data.synthetic import synthesize

    return synthesize(tmp_path / "layers", n_train=2, n_val=3, size=64, task="layers")


def test_predictions_are_coloured_by_class_with_a_legend(
    layers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's masks stand in (a K-class model is the other parts' work): the ground truth
    for one input, all background but one class for the other; every class colour is drawn
    (the legend's patches are pure colours) and each caption is the foreground-mean Dice."""
    from condseg.data.dataset import find_pair
    from condseg.data.labels import read_class_mask, read_labels

    names = (layers / "val.txt").read_text().split()
    labels = read_labels(layers)
    assert labels is not None
    truths = [read_class_mask(find_pair(layers, n)[1], labels) for n in names]
    model_files = {}
    for label in ("good", "rnfl"):
        model_files[label] = tmp_path / f"{label}.safetensors"
        model_files[label].write_bytes(b"stand-in")

    def masks(path: Path, images: list[np.ndarray]) -> list[np.ndarray]:
        assert len(images) == len(truths)
        if path == model_files["good"]:
            return truths
        return [np.where(t == 1, 1, 0).astype(np.uint8) for t in truths]

    monkeypatch.setattr(compare_figures, "predicted_masks", masks)
    drawn = {}
    inputs = [write_classes_evaluation(tmp_path / label, scores, data_root=str(layers),
                                       names=names, model=label,
                                       model_file=str(model_files[label]))
              for label, scores in (("good", REF[:3]), ("rnfl", RUN[:3]))]
    import condseg.viz as viz

    grid = viz.prediction_grid

    def keeping(*args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.update(kwargs)
        return grid(*args, **kwargs)

    monkeypatch.setattr(viz, "prediction_grid", keeping)
    figures = tmp_path / "figures"
    result = compare(inputs, figure_dir=figures, images=",".join(names))
    assert result.figure_images == names
    assert drawn["classes"] == CLASSES
    assert drawn["captions"]["good"] == ["Dice 100.0"] * len(names)
    assert drawn["captions"]["rnfl"] == [
        f"Dice {100 * class_dice(np.where(t == 1, 1, 0), t, 4):.1f}" for t in truths]
    with Image.open(figures / "predictions.png") as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    present = {tuple(p) for p in np.unique(pixels, axis=0)}
    for colour in class_colours(len(CLASSES))[1:]:
        assert tuple(colour) in present
    assert (figures / "predictions.pdf").read_bytes().startswith(b"%PDF")


def test_a_dataset_of_other_classes_leaves_the_figure_out_with_a_note(
    layers: Path, tmp_path: Path
) -> None:
    names = (layers / "val.txt").read_text().split()
    other = ("background", "a", "b", "c")
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"stand-in")
    folder = write_classes_evaluation(tmp_path / "ref", REF[:3], classes=other, names=names,
                                      data_root=str(layers), model_file=str(model))
    result = compare([folder], figure_dir=tmp_path / "figures")
    note = next(n for n in result.notes if n.startswith("predictions.png not written"))
    assert f"dataset {layers} declares classes {', '.join(CLASSES)}" in note
    assert not (tmp_path / "figures" / "predictions.png").exists()


def test_a_k_class_model_is_drawn_in_class_colours(layers: Path, tmp_path: Path) -> None:
    """With a real K-class model (models: num_classes; predict: class ids)."""
    import condseg

    names = (layers / "val.txt").read_text().split()
    model = condseg.create_model("unet", encoder="resnet18", num_classes=4)
    path = condseg.save_model(tmp_path / "unet.safetensors", model, mean=[0.5] * 3,
                              std=[0.25] * 3, input_size=64)
    folder = write_classes_evaluation(tmp_path / "ref", REF[:3], names=names,
                                      data_root=str(layers), model_file=str(path))
    masks = compare_figures.predicted_masks(path, [np.zeros((64, 64, 3), np.uint8)])
    assert masks[0].dtype == np.uint8 and set(np.unique(masks[0])) <= {0, 1, 2, 3}
    result = compare([folder], figure_dir=tmp_path / "figures", images=",".join(names))
    assert not [n for n in result.notes if "predictions.png" in n], result.notes
    assert result.figure_images == names
    with Image.open(tmp_path / "figures" / "predictions.png") as im:
        present = {tuple(p) for p in np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3),
                                                axis=0)}
    assert all(tuple(colour) in present for colour in class_colours(4)[1:])  # the legend


# --------------------------------------------------------------------------- study


def test_study_md_has_the_classes_and_the_per_class_table(
    layers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from condseg.layout import StudyDir
    from condseg.study import protocol
    from condseg.study.protocol import resolve
    from condseg.study.report import write_report
    from condseg.study.runs import plan_runs
    from condseg.study.spec import read_study

    monkeypatch.setattr(protocol, "fetch_weights", lambda config: None)
    spec = read_study(None, {"data": str(layers), "methods": ["unet", "chnet"],
                             "protocol": {"pretrained": "none"}})
    study = StudyDir(tmp_path / "S")
    protocols = [resolve(spec, entry) for entry in spec.methods]
    inputs = [write_classes_evaluation(tmp_path / "unet", REF),
              write_classes_evaluation(tmp_path / "chnet", RUN, model="chnet")]
    comparison = compare(inputs, labels=["unet", "chnet"], out_dir=study.comparison,
                         pool=True)
    report = write_report(study, spec, protocols, plan_runs(spec, study), comparison, 1.0)
    text = report.read_text()
    assert f"- classes: {', '.join(CLASSES)}" in text
    assert "| Method | layers/val mIoU | layers/val mDSC |" in text and "mDSC choroid" in text
    assert CLASSES_NOTE in text


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_study_on_a_multi_class_dataset_gives_the_per_class_table(
    layers: Path, tmp_path: Path
) -> None:
    """`condseg study` on `data synth --task layers` as it is: two methods that take K train
    a tiny epoch each, and the comparison has each class's Dice and the paired statistics."""
    spec = {
        "data": str(layers),
        "methods": [
            {"name": "unet", "overrides": [
                "model.options.encoder=resnet18",
                "model.options.decoder_channels=[32,16,16,8,8]"]},
            {"name": "fpn", "method": "unet", "overrides": [
                "model.options.encoder=resnet18",
                "model.options.decoder_channels=[16,16,8,8,8]"]}],
        "seeds": [0],
        "protocol": {"size": 64, "batch_size": 2, "pretrained": "none", "precision": 32},
        "budget": {"epochs": 1},
        "overrides": ["data.num_workers=0", "progress_bar=false"],
        "launcher": {"jobs": 1},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "study"
    result = runner.invoke(app, ["study", "--config", str(tmp_path / "study.yaml"), "--out",
                                 str(out)])
    assert result.exit_code == 0, result.output[-3000:]
    header = (out / "comparison" / "compare.csv").read_text().splitlines()[0]
    for cls in CLASSES[1:]:
        assert f"mDSC {cls}" in header
    with (out / "comparison" / "stats.csv").open(newline="") as f:
        stats = list(csv.DictReader(f))
    assert [row["method"] for row in stats] == ["fpn"]
    report = (out / "study.md").read_text()
    assert "mDSC rnfl" in report and "- classes: background, rnfl, gcipl, choroid" in report


def test_a_study_refuses_a_binary_method_on_classes_before_anything_is_written(
    layers: Path, tmp_path: Path
) -> None:
    """Each method's K is checked when the study resolves it, as `condseg train` checks it."""
    spec = {"data": str(layers), "methods": [{"name": "unet"}, {"name": "condseg"}],
            "seeds": [0], "protocol": {"size": 64, "pretrained": "none"},
            "budget": {"epochs": 1}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "study"
    result = runner.invoke(app, ["study", "--config", str(tmp_path / "study.yaml"), "--out",
                                 str(out)])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith("error: method condseg:") and "binary by design" in line
    assert "\n" not in line and not out.exists()
