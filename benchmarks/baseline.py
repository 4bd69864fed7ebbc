"""What the paper's reference implementation does, as a Lightning callback: a synchronous ``torch.save`` every k steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch


class TorchSaveEveryK(pl.Callback):
    """Saves model and optimizer state with ``torch.save`` on the training thread every ``k`` steps (and at the end),
    plus the step's batch indices in memory: the reference implementation's proof, without its hashing of the data."""

    def __init__(self, dirpath: str | Path, k: int) -> None:
        self.dirpath = Path(dirpath)
        self.k = k

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        self._save(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step % self.k == 0:
            self._save(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module)

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = {"net": pl_module.state_dict(), "optimizer": [o.state_dict() for o in trainer.optimizers]}
        torch.save(state, self.dirpath / f"model_step_{trainer.global_step}")
