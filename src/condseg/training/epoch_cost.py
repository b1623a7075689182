"""What each training epoch cost, logged beside its losses (``metrics.csv``'s ``epoch_seconds``
and ``train_tflop``), so that curves can follow a compute budget and a study can report what
each method spent.

``train_tflop``: the images the epoch's training steps saw (counted per batch, so batch limits
and a last partial batch are exact) times the stage's training FLOPs per image
(:func:`condseg.training.cost.flops_per_image`, counted once when the stage starts).
``epoch_seconds``: wall seconds from the epoch's start to the end of its validation (Lightning
ends an epoch after its validation; the checkpoints of the epoch are written after this
callback's end of epoch, so their writes are not in it).

A stage resumed mid-epoch continues the epoch's counts from its checkpoint (they are saved in
it), so the resumed epoch counts the images trained into the model and the seconds spent on
them, not those of work a kill lost.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from condseg import epoch_log

#: The TensorBoard tags; :func:`condseg.epoch_log.column_name` drops the ``cost/``.
SECONDS, TFLOP = f"cost/{epoch_log.SECONDS}", f"cost/{epoch_log.TFLOP}"


class EpochCost(Callback):
    """Logs each training epoch's wall seconds and training TFLOP."""

    def __init__(self, flops_per_image: float) -> None:
        self.flops_per_image = flops_per_image
        self._epoch, self._images, self._carried = -1, 0, 0.0
        self._start = time.perf_counter()
        self._restored: dict[str, Any] | None = None

    def _begin(self, epoch: int, carried: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._images = int(carried["images"]) if carried else 0
        self._carried = float(carried["seconds"]) if carried else 0.0
        self._start = time.perf_counter()

    def _seconds(self) -> float:
        return self._carried + time.perf_counter() - self._start

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "images": self._images, "seconds": self._seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A fit's first epoch; Lightning calls no ``on_train_epoch_start`` for an epoch it
        resumes mid-way, whose counts the checkpoint carries."""
        restored, self._restored = self._restored, None
        same = restored is not None and restored.get("epoch") == trainer.current_epoch
        self._begin(trainer.current_epoch, restored if same else None)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin(trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        # before the step's checkpoint is written: Lightning runs checkpoint callbacks last
        self._images += len(batch["image"])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Called after the epoch's validation. Under DDP each process counts its own images:
        the logged TFLOP is their sum over processes, the seconds the slowest process's."""
        device = pl_module.device
        dtype = torch.float32 if device.type == "mps" else torch.float64  # exact counts
        for key, value, reduce in ((SECONDS, self._seconds(), "max"),
                                   (TFLOP, self._images * self.flops_per_image / 1e12, "sum")):
            pl_module.log(key, torch.tensor(value, dtype=dtype, device=device), on_step=False,
                          on_epoch=True, sync_dist=True, reduce_fx=reduce, batch_size=1)
