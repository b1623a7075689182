"""What a run records for the researcher besides its model: the console copied to
``RUN/train.log``, TensorBoard's hyper-parameters and validation predictions; and the one
place where Lightning's warnings that a user cannot act on are silenced.

(``RUN/<stage>/metrics.csv``, one row per epoch, is :mod:`condseg.epoch_log`.)
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console, RenderableType, RenderHook
from rich.control import Control
from rich.text import Text

from condseg.errors import TrainingError
from condseg.filekind import refuse_special

LOG_WIDTH = 120  # of tables and rules in the log; text lines are never wrapped
GRID_IMAGES = 4  # validation images in TensorBoard's prediction grid

#: Lightning warnings about its own internals or its own argument names (the fix, where there
#: is one, is a condseg setting: data.num_workers, log_every_n_steps). Matched from the start.
UNACTIONABLE_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",  # Lightning calls a deprecated torch API
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"The '\w+' does not have many workers which may be a bottleneck",
    r"Checkpoint directory .* exists and is not empty",  # a resumed stage's own checkpoints
    r"Found \d+ module\(s\) in eval mode at the start of training",  # LossNet's frozen VGG
    # The module lays out each batch for its device (the data module cannot know it).
    r"You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a",
)


def quiet_lightning() -> None:
    """Keep the terminal for condseg's own output: Lightning's start-up notes (accelerator
    summary, tips, batch-limit notes) are INFO records of the logger it sets up when imported;
    its warnings that a user cannot act on are ignored."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    for message in UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


class _CopyToLog(RenderHook):
    """Prints what a console prints on a second, plain console as well (live displays'
    cursor moves excepted)."""

    def __init__(self, log: Console) -> None:
        self.log = log

    def process_renderables(self, renderables: list[RenderableType]) -> list[RenderableType]:
        for renderable in renderables:
            if isinstance(renderable, Text):  # a line of text stays one line
                self.log.print(renderable, soft_wrap=True, end=renderable.end)
            elif not isinstance(renderable, Control):
                self.log.print(renderable, end="")
        return renderables


class RunLog:
    """``RUN/train.log``: from :meth:`attach` until the block ends, whatever ``console`` prints
    is also appended there as plain whole lines (a resumed run appends); the error that ends
    a run is its last line."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.log: Console | None = None  # the file's own console, for what only it gets
        self._file: TextIO | None = None

    def attach(self, file: Path) -> None:
        """Copy from now on into ``file`` (a run's or a cross-validation's log). A line a
        killed process left unfinished is ended first, so the resumed run starts a line. One
        that is no regular file (a FIFO would block) is refused unopened."""
        refuse_special(file, "the run's log", TrainingError,
                       "move it away; condseg writes its log there")
        self._file = file.open("a", encoding="utf-8")
        if not _ends_a_line(file):
            self._file.write("\n")
        self.log = Console(file=self._file, width=LOG_WIDTH, force_terminal=False,
                           no_color=True, highlight=False, emoji=False, soft_wrap=True)
        self.console.push_render_hook(_CopyToLog(self.log))

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.log is None or self._file is None:
            return
        self.console.pop_render_hook()
        if error is not None:
            self.log.print(f"stopped: {type(error).__name__}: {error}", markup=False)
        self._file.close()
        self.log = self._file = None


def _ends_a_line(file: Path) -> bool:
    """Whether ``file`` is empty or its last line is whole."""
    with file.open("rb") as f:
        if f.seek(0, 2) == 0:
            return True
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The resolved configuration as ``key.sub=value`` pairs (the override syntax), values
    TensorBoard can show (lists and None as text)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            ok = isinstance(value, bool | int | float | str)
            flat[f"{prefix}{key}"] = value if ok else str(value)
    return flat


def _tensorboard(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


class TensorBoardExtras(Callback):
    """The hyper-parameters (with the best validation mIoU so far as their metric) and, every
    ``every_n_epochs`` epochs (0: never), a grid of the first validation images: image |
    ground truth | prediction."""

    def __init__(self, hparams: Mapping[str, Any], every_n_epochs: int,
                 mean: Iterable[float], std: Iterable[float]) -> None:
        self.params, self.every_n_epochs = dict(hparams), every_n_epochs
        self.mean = torch.tensor(list(mean)).view(3, 1, 1)
        self.std = torch.tensor(list(std)).view(3, 1, 1)
        self._best = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = _tensorboard(trainer)
        if logger is not None:
            logger.log_hyperparams(self.params, metrics={"hp/best_val_miou": self._best})

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = _tensorboard(trainer)
        if logger is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs and epoch % self.every_n_epochs == 0:
            grid = self._grid(trainer.val_dataloaders.dataset, pl_module)
            logger.experiment.add_image("val/predictions", grid, global_step=epoch)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Read once the epoch's metrics are all in: a K-class module logs val/miou in its own
        on_validation_epoch_end, which Lightning runs after the callbacks'."""
        logger = _tensorboard(trainer)
        if logger is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        miou = trainer.callback_metrics.get("val/miou")
        if miou is not None:
            self._best = max(self._best, 100 * float(miou))
            logger.log_metrics({"hp/best_val_miou": self._best}, step=trainer.global_step)

    @torch.no_grad()
    def _grid(self, dataset: torch.utils.data.Dataset, pl_module: L.LightningModule
              ) -> torch.Tensor:
        from torchvision.utils import make_grid

        items = [dataset[i] for i in range(min(GRID_IMAGES, len(dataset)))]
        images = torch.stack([item["image"] for item in items])
        truth = torch.stack([item["mask"] for item in items])
        model = pl_module.model
        training = model.training
        model.eval()
        try:
            logits = model(images.to(pl_module.device)).mask.float().cpu()
        finally:
            model.train(training)
        shown = (images * self.std + self.mean).clamp(0, 1)
        if logits.shape[1] == 1:
            predicted = (logits >= 0).float()
        else:  # class ids as grey levels, background black (ignored pixels white)
            last = logits.shape[1] - 1
            predicted = logits.argmax(1, keepdim=True).float() / last
            truth = (truth.float() / last).clamp(max=1)
        cells = torch.stack([shown, *(x.expand(-1, 3, -1, -1) for x in (truth, predicted))],
                            dim=1).flatten(0, 1)  # row per image
        return make_grid(cells, nrow=3, padding=2, pad_value=1.0)
