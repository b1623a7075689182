"""``RUN/<stage>/metrics.csv``: the training log a researcher reads, one row per epoch.

Lightning's CSV logger writes a row per logging event (step rows, validation rows, epoch rows
and learning-rate rows interleaved, epochs from 0, one ``csv/version_K/`` per attempt of a
resumed stage). The table here has one row per epoch, epochs counted from 1, and plain column
names: ``train_loss`` is the method's full training loss and ``train_mask_loss`` /
``val_mask_loss`` the same quantity on both sides (L_mask, BCE + Dice of the output mask);
the overlap scores are in percent, as in every printed table; learning rates are ``lr_<group>``;
what the epoch cost is ``epoch_seconds`` (wall seconds, its validation included) and
``train_tflop`` (training FLOPs / 1e12: :mod:`condseg.training.epoch_cost`).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from condseg.errors import first_line
from condseg.files import read_text, write_text
from condseg.layout import StageDir
from condseg.tables import read_table, table_text

FIRST_COLUMNS = ("epoch", "train_loss", "train_mask_loss", "val_mask_loss", "val_miou",
                 "val_mdsc", "val_recall", "val_precision")
#: The training loss of each logged step: an interrupted epoch's mean is taken from these.
STEP_LOSS = "train/loss_step"
PERCENT = frozenset({"val_miou", "val_mdsc", "val_recall", "val_precision"})
#: With K >= 2 classes, each foreground class's validation Dice (percent too).
CLASS_DICE = "val_dice_"
#: Each epoch's cost: wall seconds, and training TFLOP (images seen x FLOPs per image / 1e12).
SECONDS, TFLOP = "epoch_seconds", "train_tflop"


def column_name(key: str) -> str | None:
    """The table's name of a logged key (a TensorBoard tag); None for per-step values."""
    if key == "step" or key.endswith("_step"):
        return None
    if key == "val/loss":  # what the plateau schedule watches: L_mask, not the training loss
        return "val_mask_loss"
    if key.startswith("cost/"):  # condseg.training.epoch_cost's tags
        return key.removeprefix("cost/")
    if key.startswith("lr-"):  # LearningRateMonitor: lr-<Optimizer>[/<group>]
        group = key.partition("/")[2]
        return f"lr_{group}" if group else "lr"
    return key.removesuffix("_epoch").replace("/", "_")


def read_lightning_log(path: Path) -> dict[int, dict[str, float]]:
    """{epoch from 1: {column: value}} of one Lightning ``metrics.csv``: the last finite value
    per epoch, in the table's names and units. Rows without an epoch (learning rates, logged as
    an epoch starts) belong to the epoch of the next row that has one. An epoch whose end a kill
    interrupted (no epoch mean logged) gets ``train_loss`` as the mean of its logged steps.

    A killed process may have left the file half-written: empty, without its header's
    ``epoch`` column yet (only learning rates flushed), or with a torn last row. Such a file
    reads as the epochs it holds whole (none, for the first two)."""
    epochs: dict[int, dict[str, float]] = {}
    steps: dict[int, list[float]] = {}
    pending: dict[str, float] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "epoch" not in reader.fieldnames:
            return {}
        for row in reader:
            try:
                values, number, step_loss = _parsed(row)
            except (ValueError, TypeError):  # a torn row: a kill during the write
                continue
            if number is None:
                pending.update(values)
                continue
            epoch = epochs.setdefault(number, {})
            epoch.update(pending)
            epoch.update(values)
            pending = {}
            if step_loss is not None:
                steps.setdefault(number, []).append(step_loss)
    for number, losses in steps.items():
        epochs[number].setdefault("train_loss", sum(losses) / len(losses))
    return epochs


def _parsed(row: dict) -> tuple[dict[str, float], int | None, float | None]:
    """A Lightning row's finite values in the table's names and units, its epoch from 1 (None
    on a learning-rate row) and its step loss; ValueError or TypeError for a torn row (too few
    or too many cells, a number cut short)."""
    if None in row or None in row.values():
        raise ValueError("torn row")
    values = {name: float(cell) for key, cell in row.items()
              if cell and key != "epoch" and (name := column_name(key)) is not None}
    values = {k: 100 * v if k in PERCENT or k.startswith(CLASS_DICE) else v
              for k, v in values.items() if math.isfinite(v)}
    number = int(float(row["epoch"])) + 1 if row["epoch"] else None
    step_loss = float(row[STEP_LOSS]) if row.get(STEP_LOSS) else None
    return values, number, step_loss if step_loss is not None and math.isfinite(step_loss) else None


def read_epochs(path: Path) -> dict[int, dict[str, float]]:
    """{epoch: {column: value}} of a stage's ``metrics.csv``: this table, or a Lightning log
    (run folders written before it) converted to it."""
    if not path.is_file():
        raise FileNotFoundError(f"training log {path} not found")
    todo = "restore it, or move it away to plot the others"
    header = next(csv.reader(io.StringIO(read_text(path, ValueError, todo))), [])
    if "step" in header:
        return read_lightning_log(path)
    if "epoch" not in header:
        raise ValueError(f"{path} is not a training log (no 'epoch' column)")
    rows = read_table(path, "epoch", ValueError, todo)
    try:
        return {int(row["epoch"]): {k: v for k, v in row.items() if k != "epoch" and v is not None}
                for row in rows}
    except ValueError as exc:  # an epoch not a number
        raise ValueError(f"{path} is damaged ({first_line(exc)}); {todo}") from None


def write_epoch_log(stage_dir: Path) -> Path:
    """Write ``stage_dir/metrics.csv`` from the Lightning logs of every attempt of the stage
    (``csv/version_K/``, one per resume): a later attempt's values replace those of an epoch it
    logged again (the epoch a kill interrupted)."""
    epochs: dict[int, dict[str, float]] = {}
    versions = sorted(StageDir(stage_dir).csv_logs.glob("version_*/metrics.csv"),
                      key=lambda p: int(p.parent.name.removeprefix("version_")))
    for path in versions:
        for epoch, values in read_lightning_log(path).items():
            epochs.setdefault(epoch, {}).update(values)
    present = {key for values in epochs.values() for key in values}
    rest = sorted(present - set(FIRST_COLUMNS),  # the loss terms, the cost, learning rates
                  key=lambda k: (k.startswith("lr"), k in (SECONDS, TFLOP), k))
    columns = [c for c in FIRST_COLUMNS if c == "epoch" or c in present] + rest
    out = StageDir(stage_dir).metrics
    return write_text(out, table_text(columns, ({"epoch": e, **epochs[e]} for e in sorted(epochs))))
