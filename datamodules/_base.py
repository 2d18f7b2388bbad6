"""What the DataModules share: the four loader hooks over named splits, and (for the image DataModules) loaders
over the ``train_set`` / ``val_set`` / ``test_set`` that ``setup`` builds, sized by the ``batch_size``,
``eval_batch_size`` and ``num_workers`` hyperparameters."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset

__all__ = ["SplitLoaders", "SplitDataModule"]


class SplitLoaders(L.LightningDataModule):
    """``train_dataloader`` ... ``predict_dataloader`` from one ``_loader(split, train)`` (predict reads test)."""

    def _loader(self, split: str, train: bool) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)


class SplitDataModule(SplitLoaders):
    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None

    def _loader(self, split: str, train: bool) -> DataLoader:
        h = self.hparams
        ds = getattr(self, f"{split}_set")
        return DataLoader(
            ds,
            batch_size=h.batch_size if train else h.eval_batch_size,
            shuffle=train,
            # a ragged last batch of 1 breaks BatchNorm; but a split smaller than a batch must still train
            drop_last=train and len(ds) > h.batch_size,
            num_workers=h.num_workers,
            persistent_workers=h.num_workers > 0,
        )
