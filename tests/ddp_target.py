"""Run by test_ddp in a subprocess: multi-process CPU DDP (gloo) training with the callback (``--help``).

Lightning's DDP launcher starts rank 1 by running this same command again.
The run is made so that a replay that got DDP wrong would not match it:
each rank draws dropout from a stream of its own, and the module reads
BatchNorm's running statistics inside its training step (an eval-mode
forward), so rank 1 must see the buffers the step started with, as DDP's
broadcast gives it, and not rank 0's updated ones.
"""

from __future__ import annotations

import argparse
import os
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


class KillAfter(pl.Callback):
    """Kills every rank as a preemption does, once ``step`` steps have run (after Lightning's checkpoint before it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            os._exit(9)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--no-broadcast-buffers", action="store_true")
    p.add_argument("--module", choices=("teacher", "gan"), default="teacher")
    p.add_argument("--swa", action="store_true")
    p.add_argument("--limit", type=int, default=None, help="limit_train_batches")
    p.add_argument("--ckpt-every", type=int, default=None, help="ModelCheckpoint(every_n_train_steps=N, save_last=True)")
    p.add_argument("--kill-after", type=int, default=None, help="kill every rank once this many steps ran")
    p.add_argument("--resume", action="store_true", help="fit(ckpt_path=ROOT/ckpt/last.ckpt)")
    return p.parse_args(argv)


if __name__ == "__main__":
    from lightning.pytorch.callbacks import ModelCheckpoint, StochasticWeightAveraging
    from lightning.pytorch.strategies import DDPStrategy

    from lightning_pol.zoo.digits_data import DigitsDataModule
    from tests.callback_project import DigitsGAN
    from tests.ddp_target import (  # by their importable names, for the verifier
        KillAfter,
        RankStreams,
        TeacherModule,
    )

    a = parse(sys.argv[1:])
    pl.seed_everything(0, verbose=False)
    callbacks: list[pl.Callback] = [RankStreams(), ProofOfLearning(f"{a.root}/proof", every_n_steps=a.k)]
    if a.swa:
        callbacks.append(StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=1))
    if a.ckpt_every:
        callbacks.append(ModelCheckpoint(dirpath=f"{a.root}/ckpt", every_n_train_steps=a.ckpt_every, save_last=True, save_top_k=-1))
    if a.kill_after:
        callbacks.append(KillAfter(a.kill_after))
    gan = a.module == "gan"
    strategy = DDPStrategy(find_unused_parameters=gan, **({"broadcast_buffers": False} if a.no_broadcast_buffers else {}))
    trainer = make_trainer(
        callbacks, a.root, strategy=strategy, devices=a.devices, num_nodes=a.nodes, max_epochs=a.epochs,
        accumulate_grad_batches=a.accumulate, sync_batchnorm=a.sync_bn, limit_train_batches=a.limit,
        gradient_clip_val=None if gan else 1.0, enable_checkpointing=bool(a.ckpt_every),
    )
    module, data = (DigitsGAN(), DigitsDataModule(num_workers=0)) if gan else (TeacherModule(), UnseenDataModule(num_workers=2))
    trainer.fit(module, datamodule=data, ckpt_path=f"{a.root}/ckpt/last.ckpt" if a.resume else None)
