"""Run by test_resume in a subprocess: 4 epochs with Lightning checkpoints every 20 steps, SIGKILLed and resumed."""

from __future__ import annotations

import sys
import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_pol import ProofOfLearning
from tests.conftest import make_trainer
from tests.unseen_project import UnseenDataModule, UnseenModule


class Slow(pl.Callback):
    """Leaves the killer time to act between two Lightning checkpoints."""

    def on_train_batch_end(self, *args):
        time.sleep(0.02)


if __name__ == "__main__":
    root, ckpt_path = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    pl.seed_everything(0, verbose=False)
    callbacks = [Slow(), ModelCheckpoint(dirpath=f"{root}/ckpt", every_n_train_steps=20, save_last=True, save_top_k=-1),
                 ProofOfLearning(f"{root}/proof", every_n_steps=8)]
    trainer = make_trainer(callbacks, root, max_epochs=4, enable_checkpointing=True)
    trainer.fit(UnseenModule(), datamodule=UnseenDataModule(num_workers=2), ckpt_path=ckpt_path)
