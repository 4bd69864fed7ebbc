"""The zoo's datamodules share this: a training and a validation split, and their DataLoaders from the hparams."""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset


class TrainValDataModule(pl.LightningDataModule):
    """``setup`` fills ``train_set`` and ``val_set``; the loaders take ``batch_size``, ``num_workers``,
    ``persistent_workers`` and, where the subclass has them, ``shuffle`` and ``drop_last`` from its hparams."""

    def __init__(self) -> None:
        super().__init__()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(
            dataset,
            batch_size=h.batch_size,
            shuffle=h.get("shuffle", True) and train,
            drop_last=h.get("drop_last", False) and train,
            num_workers=h.num_workers,
            persistent_workers=h.persistent_workers and h.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        assert self.val_set is not None
        return self._loader(self.val_set, train=False) if len(self.val_set) else []  # type: ignore[arg-type]
