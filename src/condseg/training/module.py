"""The one LightningModule that trains any stage of any method.

What differs between stages is data, not code: the model, the loss (with the views it needs),
the optimiser, the schedule and an optional per-batch hook, all from the stage's config.
``train/loss`` is the stage's full loss; ``train/mask_loss`` is L_mask (BCE + Dice) of the
output mask on the same batches. Validation is the same for every method: ``val/loss`` is L_mask
of the mask logits (what the plateau schedule watches by default); ``val/miou``, ``val/mdsc``,
``val/recall`` and ``val/precision`` are means over images (``val/miou`` is what checkpointing
and early stopping watch).

With K >= 2 classes the labels are the argmax of the K maps; ``val/mdsc`` and ``val/miou`` are
means over images of each image's mean over the foreground classes it holds, ``val/dice/<class>``
each class's mean over the images that hold it. A class absent from both the ground truth and
the prediction of an image is left out there (not 1); ignored pixels count for nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor

from condseg.config import StageConfig
from condseg.errors import NonFiniteLossError
from condseg.evaluation.overlap import class_confusion, class_scores, overlap_scores
from condseg.losses.base import Loss
from condseg.losses.mask import mask_loss
from condseg.models.base import SegmentationModel, training_memory_format, use_plain_kernels
from condseg.training.hooks import BatchHook
from condseg.training.optim import configure
from condseg.training.plan import StageParts

VAL_SCORES = ("iou", "dice", "recall", "precision")
_VAL_NAMES = {"iou": "miou", "dice": "mdsc", "recall": "recall", "precision": "precision"}


class SegmentationModule(L.LightningModule):
    """Trains ``model`` with ``loss`` under the optimiser and schedule of ``cfg``, on its plain
    (reference) kernels or its fast ones."""

    def __init__(
        self,
        model: SegmentationModel,
        loss: Loss,
        cfg: StageConfig,
        stage_name: str = "train",
        batch_hook: BatchHook | None = None,
        memory_format: str = "auto",
        plain_kernels: bool = False,
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.cfg = cfg
        self.stage_name = stage_name  # `stage` is what Lightning's setup(stage) calls its phase
        self.batch_hook = batch_hook
        self.memory_format = memory_format
        self._plain = plain_kernels  # not scanned back from the network's modules
        use_plain_kernels(model, plain_kernels)
        self._layout = torch.contiguous_format  # resolved on the training device
        self.classes = tuple(classes) if classes is not None else None  # K >= 2, background 1st
        self._sums: Tensor | None = None  # K >= 2: the validation epoch's sums (class_sums)
        self._warned_empty = False  # K >= 2: warned once of an epoch with nothing to score

    @classmethod
    def from_parts(cls, model: SegmentationModel, parts: StageParts) -> SegmentationModule:
        """The module of a planned stage: its loss, hook, optimiser, schedule, layout and
        kernels, all from its plan."""
        plan = parts.plan
        return cls(model, parts.loss, plan.cfg, stage_name=plan.name,
                   batch_hook=parts.batch_hook, memory_format=plan.memory_format,
                   plain_kernels=plan.plain_kernels, classes=parts.classes)

    def forward(self, x: Tensor) -> object:
        return self.model(x)

    def setup(self, stage: str) -> None:
        """The layout is set before the strategy wraps the model (DDP's gradient buckets take
        the parameters' strides as they are then)."""
        self.use_layout_of(self.trainer.strategy.root_device)

    def use_layout_of(self, device: torch.device) -> torch.memory_format:
        """The memory layout a training step runs in on ``device``, for the weights and (in
        :meth:`on_after_batch_transfer`) the images."""
        self._layout = training_memory_format(device, self.memory_format, self._plain)
        self.model.to(memory_format=self._layout)
        return self._layout

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Images (and their views) in the layout the model's weights are in."""
        return {key: value.contiguous(memory_format=self._layout)
                if isinstance(value, Tensor) and value.ndim == 4 and key != "mask" else value
                for key, value in batch.items()}

    def step_losses(self, batch: dict) -> tuple[dict, dict[str, Tensor]]:
        """The model's outputs for every view the loss needs and the loss's terms (``loss``
        the total): a training step before its checks and logging, which the FLOP count of a
        step (:mod:`condseg.training.cost`) runs too."""
        # One forward pass per view (not one on the concatenated batch): BatchNorm sees each
        # view alone, as in the authors' training.
        outputs = {view: self.model(batch[view]) for view in ("image", *self.loss.views)}
        return outputs, self.loss(outputs, batch["mask"])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if self.batch_hook is not None:
            batch = self.batch_hook(batch)
        outputs, losses = self.step_losses(batch)
        loss = losses.pop("loss")
        if not torch.isfinite(loss):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            raise NonFiniteLossError(
                f"non-finite training loss {loss.item()} in stage {self.stage_name}, epoch "
                f"{self.current_epoch}, step {self.global_step}" + (f" ({parts})" if parts else "")
            )
        size = batch["image"].shape[0]
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=size)
        with torch.no_grad():  # the quantity val/loss is, on the training batches
            losses["mask_loss"] = mask_loss(outputs["image"].mask, batch["mask"])
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, on_step=False, on_epoch=True,
                      batch_size=size)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.model(batch["image"]).mask
        if self.classes is not None:
            self.log("val/loss", mask_loss(logits, batch["mask"]), on_step=False, on_epoch=True,
                     prog_bar=True, batch_size=logits.shape[0], sync_dist=True)
            sums = class_sums(logits.detach(), batch["mask"])
            self._sums = sums if self._sums is None else self._sums + sums
            return
        scores = overlap_scores(logits.detach() >= 0, batch["mask"] >= 0.5)
        metrics = {"val/loss": mask_loss(logits, batch["mask"])}
        metrics.update({f"val/{_VAL_NAMES[k]}": scores[k].float().mean() for k in VAL_SCORES})
        for names, shown in ((("val/loss", "val/miou", "val/mdsc"), True),
                             (("val/recall", "val/precision"), False)):
            self.log_dict({k: metrics[k] for k in names}, on_step=False, on_epoch=True,
                          prog_bar=shown, batch_size=logits.shape[0], sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self._sums = None

    def on_validation_epoch_end(self) -> None:
        """The K-class scores of the epoch, from the sums of every batch of every process: the
        foreground means under the binary path's names (so every monitor exists), and the Dice
        of each class the split holds (a class absent from it has none, so none is logged)."""
        if self.classes is None:
            return
        mine = self._sums if self._sums is not None else torch.zeros(  # no batch here: 0s, so
            len(VAL_SCORES) + 1, len(self.classes), dtype=torch.float64,  # every rank reduces
            device=self.device)
        sums = self.trainer.strategy.reduce(mine, reduce_op="sum")
        if sums[-1, 0] == 0 and not self._warned_empty:
            self._warned_empty = True
            warnings.warn("no validation image holds any foreground class (in its ground truth "
                          "or prediction): the epoch's foreground means are logged as 0",
                          stacklevel=1)
        metrics = class_metrics(sums, self.classes)
        means = [f"val/{_VAL_NAMES[k]}" for k in VAL_SCORES]
        self.log_dict({k: metrics.pop(k) for k in means}, prog_bar=True)
        self.log_dict(metrics)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the validation metrics of the saved epoch, so that the exported best model file
        can report them without a second validation pass."""
        checkpoint["val_metrics"] = {
            k.removeprefix("val/"): float(v)
            for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")
        }

    def configure_optimizers(self) -> dict:
        return configure(self.model, self.cfg)


def class_sums(logits: Tensor, target: Tensor) -> Tensor:
    """What a validation epoch adds up, float64 (len(VAL_SCORES) + 1, K): one row of sums per
    score in VAL_SCORES, then the counts; column 0 over images of each image's foreground mean
    (images with no class at all left out), column c over the images that hold class c. The
    scores are evaluation's (:func:`condseg.evaluation.overlap.class_scores`)."""
    confusion = class_confusion(logits.argmax(1), target[:, 0], logits.shape[1])
    scores = class_scores(confusion)
    present = ~scores["dice"].isnan()
    some = present.any(1)
    rows = [torch.cat([(scores[k].nan_to_num().sum(1) / present.sum(1).clamp_min(1))[some]
                       .sum()[None], scores[k].nan_to_num().sum(0)]) for k in VAL_SCORES]
    counts = torch.cat([some.sum(dtype=torch.float64)[None], present.sum(0, dtype=torch.float64)])
    return torch.stack([*rows, counts])


def class_metrics(sums: Tensor, classes: Sequence[str]) -> dict[str, Tensor]:
    """The validation metrics of an epoch's :func:`class_sums`: the foreground means under the
    binary path's names (so every monitor exists; 0 for an epoch with nothing to score, see
    docs/decisions.md) and ``val/dice/<class>`` of each class the split holds (a class absent
    from it has no score: left out, never NaN)."""
    totals, counts = sums[:-1], sums[-1]
    metrics = {f"val/{_VAL_NAMES[k]}": (totals[i, 0] / counts[0].clamp_min(1)).float()
               for i, k in enumerate(VAL_SCORES)}
    dice = totals[VAL_SCORES.index("dice")]
    metrics.update({f"val/dice/{name}": (dice[c] / counts[c]).float()
                    for c, name in enumerate(classes) if c > 0 and counts[c] > 0})
    return metrics
