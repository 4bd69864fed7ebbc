"""Run by test_object_storage in a subprocess, as a user runs training: the proof at an ``s3://`` URL (endpoint and
keys from fsspec's configuration in the environment), Lightning's checkpoints on the local disk.

    python -m tests.object_store_target ROOT URL [--resume] [--kill-at-step N] [--slow] [--logger mlflow|wandb] [--log-proof all]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_pol import ProofOfLearning
from lightning_pol.errors import PoLError
from tests.conftest import make_trainer
from tests.unseen_project import UnseenDataModule, UnseenModule


class KillAt(pl.Callback):
    """SIGKILL this process once training reaches a step (a crash: nothing runs after it)."""

    def __init__(self, step: int | None, slow: bool) -> None:
        self.step, self.slow = step, slow

    def on_train_batch_end(self, trainer, *args):
        if self.slow and trainer.global_step >= 40:
            time.sleep(0.3)  # after Lightning's second checkpoint: leaves the test time to stop the server while training goes on
        if self.step is not None and trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _logger(kind: str | None, root: str):
    if kind == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(experiment_name="pol", tracking_uri=f"file:{root}/mlruns")
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(project="pol", save_dir=root, offline=True)
    return False


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("url")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-at-step", type=int)
    p.add_argument("--slow", action="store_true")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--logger", choices=("mlflow", "wandb"))
    p.add_argument("--log-proof", default="")
    args = p.parse_args()
    pl.seed_everything(0, verbose=False)
    pol = ProofOfLearning(args.url, every_n_steps=8, log_proof={"": False, "true": True}.get(args.log_proof, args.log_proof))
    callbacks = [KillAt(args.kill_at_step, args.slow), pol,
                 ModelCheckpoint(dirpath=f"{args.root}/ckpt", every_n_train_steps=20, save_last=True, save_top_k=-1)]
    logger = _logger(args.logger, args.root)
    trainer = make_trainer(callbacks, args.root, max_epochs=args.epochs, enable_checkpointing=True, logger=logger)
    try:
        trainer.fit(UnseenModule(), datamodule=UnseenDataModule(num_workers=2),
                    ckpt_path=f"{args.root}/ckpt/last.ckpt" if args.resume else None)
    except PoLError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    run = None if logger is False else getattr(logger, "run_id", None) or logger.experiment.id
    print(json.dumps({"identity": pol.identity, "tracker_run": run}))
