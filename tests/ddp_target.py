"""Run by test_ddp in a subprocess: 2-process CPU DDP (gloo) training with the callback.

Lightning's DDP launcher starts rank 1 by running this same command again.
The run is made so that a replay that got DDP wrong would not match it:
each rank draws dropout from a stream of its own, and the module reads
BatchNorm's running statistics inside its training step (an eval-mode
forward), so rank 1 must see the buffers the step started with, as DDP's
broadcast gives it, and not rank 0's updated ones.
"""

from __future__ import annotations

import sys

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from lightning_pol import ProofOfLearning
from tests.conftest import make_trainer
from tests.unseen_project import UnseenDataModule, UnseenModule


class TeacherModule(UnseenModule):
    """Also pulls its predictions toward its own eval-mode predictions, which read BatchNorm's running statistics."""

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        self.net.eval()
        with torch.no_grad():
            target = self.net(x).softmax(-1)
        self.net.train()
        logits = self.net(x)
        return F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing) + F.mse_loss(logits.softmax(-1), target)


class RankStreams(pl.Callback):
    """Gives each rank its own RNG stream once DDP has set up (Lightning re-seeds every rank alike)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.manual_seed(100 + trainer.global_rank)


if __name__ == "__main__":
    from tests.ddp_target import (  # by their importable names, for the verifier
        RankStreams,
        TeacherModule,
    )

    root, epochs, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(
        [RankStreams(), ProofOfLearning(f"{root}/proof", every_n_steps=k)], root,
        strategy="ddp", devices=2, max_epochs=epochs, gradient_clip_val=1.0,
    )
    trainer.fit(TeacherModule(), datamodule=UnseenDataModule(num_workers=2))
