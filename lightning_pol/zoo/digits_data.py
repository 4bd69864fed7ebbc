"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (1,797 images, no download)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from lightning_pol.zoo.split_data import TrainValDataModule


class DigitsDataset(Dataset):
    """Digits as ``(image [1, 8, 8] float in [0, 1], label)``; optional random contrast and noise.

    The augmentation is drawn from torch's global RNG inside ``__getitem__`` (in a
    worker when ``num_workers > 0``), the case a proof must replay exactly.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool = False) -> None:
        self.images = images
        self.labels = labels
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment:
            image = (image * (0.8 + 0.4 * torch.rand(())) + 0.05 * torch.randn_like(image)).clamp_(0.0, 1.0)
        return image, int(self.labels[index])


class DigitsDataModule(TrainValDataModule):
    """Example::

        dm = DigitsDataModule(batch_size=32)
        trainer.fit(DigitsCNN(), datamodule=dm)

    ``val_fraction`` of the images (a fixed split from ``split_seed``) are held out.
    """

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        augment: bool = False,
        shuffle: bool = True,
        drop_last: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.int64)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.hparams.split_seed))
        n_val = int(round(self.hparams.val_fraction * len(labels)))
        val, train = order[:n_val], order[n_val:]
        self.train_set = DigitsDataset(images[train], labels[train], augment=self.hparams.augment)
        self.val_set = DigitsDataset(images[val], labels[val])
