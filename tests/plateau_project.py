"""A user's project whose learning rate follows a validation metric: ``ReduceLROnPlateau`` on ``val/loss``.

The lightning-hydra-template's default schedule. The verifier re-creates the module from its import path
and ``hparams``, so it lives in an importable file and saves its hyperparameters.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn


class PlateauDigits(pl.LightningModule):
    """An MLP on 8x8 digits (``lightning_pol.zoo.DigitsDataModule`` batches), SGD with momentum and a
    ``ReduceLROnPlateau`` on ``monitor``, stepped every ``frequency`` epochs or steps (``interval``).

    ``threshold`` in ``rel`` mode: a large one makes every value after the first a plateau, so with
    ``patience=0`` the learning rate drops at every step of the scheduler after its first.
    ``second_scheduler``: a StepLR on the same optimizer too, stepped every epoch without a metric (and
    without changing the learning rate within 1,000 epochs).
    """

    def __init__(
        self,
        hidden: int = 32,
        dropout: float = 0.1,
        lr: float = 0.2,
        interval: str = "epoch",
        frequency: int = 1,
        patience: int = 0,
        factor: float = 0.5,
        threshold: float = 0.9,
        monitor: str = "val/loss",
        second_scheduler: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y))
        self.log("val/acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.SGD(self.parameters(), lr=h.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=h.factor, patience=h.patience, threshold=h.threshold
        )
        plateau = {"scheduler": sched, "monitor": h.monitor, "interval": h.interval, "frequency": h.frequency}
        if h.second_scheduler:
            return [opt], [plateau, {"scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1000), "interval": "epoch"}]
        return {"optimizer": opt, "lr_scheduler": plateau}
