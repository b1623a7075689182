"""Lightning modules of the two ConDSeg training stages.

The stages differ only in the network and the training loss; validation, optimiser, scheduler and
the non-finite-loss guard are shared in :class:`SegmentationModule`.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from condseg.config import Stage1Config, Stage2Config, StageConfig
from condseg.losses.condseg import mask_loss, stage1_loss, stage2_loss
from condseg.models.registry import mask_logits


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops before the step is applied."""


def iou_dice(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image IoU and Dice at probability 0.5 (logit 0); empty vs empty scores 1."""
    pred = (logits.detach() >= 0).flatten(1)
    gt = target.flatten(1) >= 0.5
    inter = (pred & gt).sum(1).float()
    total = pred.sum(1).float() + gt.sum(1).float()
    union = total - inter
    empty = total == 0
    iou = torch.where(empty, torch.ones_like(inter), inter / union.clamp_min(1))
    dice = torch.where(empty, torch.ones_like(inter), 2 * inter / total.clamp_min(1))
    return iou, dice


class SegmentationModule(L.LightningModule):
    """Shared parts of both stages.

    ``val/loss`` is L_mask of the output mask in both stages (what ReduceLROnPlateau watches);
    ``val/miou`` and ``val/mdsc`` are means over images (what checkpointing and early stopping
    watch).
    """

    stage: int

    def __init__(self, model: nn.Module, cfg: StageConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, x: Tensor) -> object:
        return self.model(x)

    def losses(self, batch: dict) -> dict[str, Tensor]:
        """The stage's training loss ``loss`` and detached parts for logging."""
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        losses = self.losses(batch)
        loss = losses.pop("loss")
        if not torch.isfinite(loss):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            raise NonFiniteLossError(
                f"non-finite training loss {loss.item()} in stage {self.stage}, epoch "
                f"{self.current_epoch}, step {self.global_step}" + (f" ({parts})" if parts else "")
            )
        size = batch["image"].shape[0]
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, on_step=False, on_epoch=True,
                      batch_size=size)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = mask_logits(self.model(batch["image"]))
        iou, dice = iou_dice(logits, batch["mask"])
        self.log_dict(
            {"val/loss": mask_loss(logits, batch["mask"]), "val/miou": iou.mean(),
             "val/mdsc": dice.mean()},
            on_step=False, on_epoch=True, prog_bar=True, batch_size=logits.shape[0], sync_dist=True,
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the validation metrics of the saved epoch, so that the exported best model file
        can report them without a second validation pass."""
        checkpoint["val_metrics"] = {
            k.removeprefix("val/"): float(v)
            for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")
        }

    def configure_optimizers(self) -> dict:
        """Adam with the encoder in its own parameter group (stage 2 fine-tunes it 10x slower)."""
        encoder = list(self.model.encoder.parameters())
        ids = {id(p) for p in encoder}
        rest = [p for p in self.model.parameters() if id(p) not in ids]
        optimizer = torch.optim.Adam(
            [{"params": encoder, "lr": self.cfg.encoder_lr, "name": "encoder"},
             {"params": rest, "lr": self.cfg.lr, "name": "rest"}],
            weight_decay=self.cfg.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.cfg.plateau_factor,
            patience=self.cfg.plateau_patience,
        )
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}


class Stage1Module(SegmentationModule):
    """Net_0; with Consistency Reinforcement on the image and its strong photometric view."""

    stage = 1
    cfg: Stage1Config

    def losses(self, batch: dict) -> dict[str, Tensor]:
        logits = self.model(batch["image"])
        if not self.cfg.consistency:
            return {"loss": mask_loss(logits, batch["mask"])}
        # Two forward passes (not one on the concatenated batch): BatchNorm sees each view alone,
        # as in the authors' training.
        return stage1_loss(logits, self.model(batch["image_strong"]), batch["mask"])


class Stage2Module(SegmentationModule):
    """Full ConDSeg (stage2_loss supervises the ablation baseline, which has no SID maps, by
    the mask loss alone)."""

    stage = 2
    cfg: Stage2Config

    def losses(self, batch: dict) -> dict[str, Tensor]:
        return stage2_loss(self.model(batch["image"]), batch["mask"])


STAGE_MODULES: dict[int, type[SegmentationModule]] = {1: Stage1Module, 2: Stage2Module}
