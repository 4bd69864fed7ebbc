"""A model of real size for the memory bound (tests/test_memory.py): an MLP of 19M float32 parameters (76 MB)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class WideMLP(pl.LightningModule):
    """3072 -> 4096 -> 1536 -> 10, SGD without momentum: the training state is the weights alone (76 MB)."""

    def __init__(self, features: int = 3072, hidden: tuple[int, int] = (4096, 1536), classes: int = 10, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(features, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], hidden[1]), nn.ReLU(),
                                 nn.Linear(hidden[1], classes))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class RandomVectors(pl.LightningDataModule):
    """``size`` random vectors with random labels, fixed by ``seed``."""

    def __init__(self, size: int = 256, features: int = 3072, classes: int = 10, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        h = self.hparams
        gen = torch.Generator().manual_seed(h.seed)
        self.train_set = TensorDataset(torch.randn(h.size, h.features, generator=gen), torch.randint(0, h.classes, (h.size,), generator=gen))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)
