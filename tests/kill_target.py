"""Run by test_crash_safety in a subprocess that gets SIGKILLed while it writes a proof."""

from __future__ import annotations

import sys
import time

import lightning.pytorch as pl

from lightning_pol import ProofOfLearning
from tests.conftest import make_trainer
from tests.unseen_project import UnseenDataModule, UnseenModule


class Slow(pl.Callback):
    def on_train_batch_end(self, *args):
        time.sleep(0.01)


if __name__ == "__main__":
    root = sys.argv[1]
    full_every = int(sys.argv[2]) if len(sys.argv) > 2 else None  # a tiered proof: full states every this many steps
    pl.seed_everything(0, verbose=False)
    pol = ProofOfLearning(f"{root}/proof", every_n_steps=1, full_every_n_steps=full_every, fsync=False, commit_every_s=0.2)
    trainer = make_trainer([Slow(), pol], root, max_epochs=50)
    trainer.fit(UnseenModule(width=64), datamodule=UnseenDataModule(num_workers=0))
