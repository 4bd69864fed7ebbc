"""Runs ended by a callback (EarlyStopping, max_time) rather than by max_steps or max_epochs verify.

With unbounded epochs (``max_epochs=-1``, or ``max_steps`` past the step where
training stopped) the Trainer settings alone never end a replay of the last
segment: the replay ends where the recorded batches end.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_pol import ProofOfLearning, verify_proof
from tests.conftest import make_trainer
from tests.unseen_project import UnseenDataModule, UnseenModule


class ConstantLRModule(UnseenModule):
    """No schedule sized from ``estimated_stepping_batches``, which is infinite with unbounded epochs."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class StopAt(pl.Callback):
    """Stops as ``max_time`` does (after a batch, mid-epoch) or as EarlyStopping does (at an epoch end)."""

    def __init__(self, step: int | None = None, epoch: int | None = None) -> None:
        self.step, self.epoch = step, epoch

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.step is not None and trainer.global_step >= self.step:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, *args) -> None:
        if self.epoch is not None and trainer.current_epoch >= self.epoch:
            trainer.should_stop = True


@pytest.mark.parametrize(
    "limits, stop, final_step",
    [
        (dict(max_epochs=-1), StopAt(epoch=1), 58),  # EarlyStopping after the second epoch (29 steps each)
        (dict(max_epochs=-1), StopAt(step=30), 30),  # max_time, mid-epoch
        (dict(max_epochs=None, max_steps=500), StopAt(step=50), 50),  # max_steps never reached
    ],
    ids=["epoch-end", "mid-epoch", "max-steps-not-reached"],
)
def test_run_stopped_by_a_callback_verifies_to_its_final_step(tmp_path, limits, stop, final_step):
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer([ProofOfLearning(tmp_path / "proof", every_n_steps=8), stop], tmp_path, **limits)
    trainer.fit(ConstantLRModule(width=4), datamodule=UnseenDataModule(batch_size=64, num_workers=2))
    assert trainer.global_step == final_step
    report = verify_proof(tmp_path / "proof", q=0)
    assert report.valid, report.reasons
    assert report.segments[-1].end_step == final_step and all(s.bit_exact for s in report.segments)
