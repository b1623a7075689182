"""The data of one stage: the training split with the stage's augmentation and views, and the
validation split as it is, both normalised like the stage's network expects."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from condseg.config import DataConfig
from condseg.data.dataset import SegmentationDataset, train_and_val_datasets
from condseg.training.plan import StagePlan


class SegmentationDataModule(L.LightningDataModule):
    """Train and validation loaders of ``plan``'s stage on the dataset ``data`` describes
    (``data.root``, splits, size, batch, workers, excluded names)."""

    def __init__(
        self, plan: StagePlan, data: DataConfig, mean: tuple, std: tuple
    ) -> None:
        super().__init__()
        self.plan, self.data, self.mean, self.std = plan, data, mean, std
        self.train_set: SegmentationDataset | None = None
        self.val_set: SegmentationDataset | None = None

    def setup(self, stage: str) -> None:
        self.train_set, self.val_set = train_and_val_datasets(
            self.data, self.plan.cfg.augmentation, self.plan.cfg.views, self.mean, self.std)

    def train_dataloader(self) -> DataLoader:
        # The last batch is dropped unless it is the only one (a split smaller than a batch).
        return DataLoader(self.train_set, shuffle=True,
                          drop_last=len(self.train_set) > self.data.batch_size, **self._loader())

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, shuffle=False, **self._loader())

    def _loader(self) -> dict:
        data = self.data
        return {"batch_size": data.batch_size, "num_workers": data.num_workers,
                "persistent_workers": data.num_workers > 0,
                "pin_memory": torch.cuda.is_available()}
