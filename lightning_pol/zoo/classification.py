"""The training and validation steps the zoo's classifiers share."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F


class ClassificationSteps(pl.LightningModule):
    """Cross-entropy training step and loss/accuracy validation; subclasses define ``forward`` and ``val_acc``."""

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True)
        self.val_acc(logits, y)
        self.log("val/acc", self.val_acc, prog_bar=True)
