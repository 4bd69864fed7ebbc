"""A user's project that lightning-pol has never seen: used as is, with only the callback added.

It has everything issue 2's acceptance asks for: dropout and BatchNorm,
AdamW with a per-step OneCycle schedule sized from
``trainer.estimated_stepping_batches``, label smoothing, gradient clipping (set
on the Trainer by the test), augmentation drawn from torch's global RNG inside
2 dataloader workers, ``shuffle=True`` and batch 32 on all 1,797 digits.
Each sample also carries its dataset index so the tests can check the proof's
index log against what ``training_step`` really received.
"""

from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler


class NoisyDigits(Dataset):
    """``augment``: noise and flips from torch's global RNG; ``every_rng``: a brightness from numpy's global RNG
    and a 90-degree turn from Python's ``random`` too, as torchvision-era and hand-written pipelines do."""

    def __init__(self, augment: bool, every_rng: bool = False) -> None:
        digits = load_digits()
        self.x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        self.y = torch.tensor(digits.target)
        self.augment = augment
        self.every_rng = every_rng

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i]
        if self.augment:
            x = x + 0.1 * torch.randn_like(x)
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        if self.every_rng:
            x = x * float(np.random.uniform(0.8, 1.2))
            if random.random() < 0.5:
                x = x.rot90(1, (-2, -1))
        return x, self.y[i], i


class EveryOtherFirst(Sampler[int]):
    """A custom sampler: even indices, then odd ones (not a shuffle, not torch's)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        yield from range(0, self.n, 2)
        yield from range(1, self.n, 2)


class GrowingBatches(BatchSampler):
    """A custom batch sampler with batches of 8, 16, 24, 8, 16, 24, ..."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        sizes, left = 0, self.n
        while left > 0:
            left -= 8 * (sizes % 3 + 1)
            sizes += 1
        return sizes

    def __iter__(self):
        perm = torch.randperm(self.n).tolist()
        pos, j = 0, 0
        while pos < self.n:
            size = 8 * (j % 3 + 1)
            yield perm[pos : pos + size]
            pos += size
            j += 1


class UnseenDataModule(pl.LightningDataModule):
    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 2,
        augment: bool = True,
        drop_last: bool = False,
        persistent_workers: bool = False,
        sampler: str = "shuffle",
        every_rng: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.data: NoisyDigits | None = None

    def setup(self, stage: str | None = None) -> None:
        self.data = NoisyDigits(self.hparams.augment, self.hparams.every_rng)

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        common = dict(num_workers=h.num_workers, persistent_workers=h.persistent_workers and h.num_workers > 0)
        if h.num_workers > 0:
            common["prefetch_factor"] = 3
        if h.sampler == "batch_sampler":
            return DataLoader(self.data, batch_sampler=GrowingBatches(len(self.data)), **common)
        if h.sampler == "custom":
            return DataLoader(self.data, batch_size=h.batch_size, sampler=EveryOtherFirst(len(self.data)), drop_last=h.drop_last, **common)
        return DataLoader(self.data, batch_size=h.batch_size, shuffle=True, drop_last=h.drop_last, **common)


class UnseenModule(pl.LightningModule):
    def __init__(self, width: int = 16, dropout: float = 0.2, lr: float = 3e-3, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(width * 16, 10),
        )
        #: what training_step received, step by step (test instrumentation, not part of the proof)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        if not self.seen or self._new_step:
            self.seen.append([])
        self.seen[-1].extend(idx.tolist())
        self._new_step = False
        loss = F.cross_entropy(self.net(x), y, label_smoothing=self.hparams.label_smoothing)
        return loss

    def on_train_batch_start(self, batch, batch_idx):
        self._step_at_start = self.trainer.global_step

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self._new_step = self.trainer.global_step != self._step_at_start

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.hparams.lr, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class SelfFeedingModule(UnseenModule):
    """A module that supplies its own training data (no datamodule)."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(NoisyDigits(augment=True), batch_size=64, shuffle=True, num_workers=0)
