"""Callbacks the replay does not run: said at fit start (one warning line), recorded, named when replay fails."""

from __future__ import annotations

import itertools
import logging

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger

from lightning_pol import ProofOfLearning, ProofReader
from lightning_pol.errors import PoLError
from lightning_pol.verification.verifier import verify_proof
from tests.conftest import make_trainer
from tests.unseen_project import UnseenDataModule, UnseenModule

WHERE = "lightning_pol.prover.other_callbacks"


class HalveGradients(Callback):
    """Changes every step: the replay, which does not run it, cannot reach the proof's next checkpoint."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        for p in pl_module.parameters():
            if p.grad is not None:
                p.grad.mul_(0.5)


def fit(tmp_path, *callbacks, strict=False, **kwargs):
    pl.seed_everything(0, verbose=False)
    pol = ProofOfLearning(tmp_path / "proof", every_n_steps=8, strict_callbacks=strict)
    make_trainer([pol, *callbacks], tmp_path, max_steps=24, max_epochs=-1, **kwargs).fit(UnseenModule(), UnseenDataModule(num_workers=0))
    return tmp_path / "proof"


def said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == WHERE and r.levelno >= logging.WARNING]


def test_a_callback_that_changes_training_is_named_at_fit_start_and_when_replay_fails(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=WHERE):
        proof = fit(tmp_path, HalveGradients())
    (line,) = said(caplog)
    assert "tests.test_other_callbacks:HalveGradients overrides on_before_optimizer_step" in line and "\n" not in line
    assert ProofReader(proof).manifest.training_values()["callbacks"] == [
        {"class": "tests.test_other_callbacks:HalveGradients", "hooks": ["on_before_optimizer_step"]}]
    report = verify_proof(proof, q=0)
    assert not report.valid and not any(s.bit_exact for s in report.segments)
    assert any("does not run the callbacks training ran (tests.test_other_callbacks:HalveGradients (on_before_optimizer_step))" in r
               for r in report.reasons)


def test_strict_callbacks_refuses_it_before_anything_is_written(tmp_path):
    with pytest.raises(PoLError, match=r"HalveGradients overrides on_before_optimizer_step.*strict_callbacks=False") as info:
        fit(tmp_path, HalveGradients(), strict=True)
    assert "\n" not in str(info.value) and not (tmp_path / "proof").exists()


@pytest.mark.parametrize("progress_bar", [TQDMProgressBar, RichProgressBar])
def test_callbacks_that_only_watch_pass_silently(tmp_path, caplog, progress_bar):
    watchers = [LearningRateMonitor(), ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=8),
                EarlyStopping(monitor="train/loss", strict=False, check_finite=False), progress_bar()]
    with caplog.at_level(logging.WARNING, logger=WHERE):
        proof = fit(tmp_path, *watchers, logger=CSVLogger(tmp_path), enable_checkpointing=True, enable_progress_bar=True)
    assert said(caplog) == []
    assert "callbacks" not in ProofReader(proof).manifest.training_values()
    report = verify_proof(proof, q=0)
    assert report.valid and all(s.bit_exact for s in report.segments) and not report.notes


_stamps = itertools.count()


class StampedHalving(HalveGradients):
    """A project's callback that changes every step, with a plain attribute no argument gives: a serial number of its
    own. Re-created from its recipe it has another, so the verifier would replay another callback."""

    def __init__(self) -> None:
        self.serial = next(_stamps)


def test_a_project_callback_whose_recipe_builds_another_is_said_and_not_replayed(tmp_path, caplog):
    """Given by ``class_path`` in a LightningCLI app, it has a recipe; the twin it builds differs in a plain setting."""
    from lightning.pytorch.cli import LightningCLI

    from lightning_pol.zoo import DigitsCNN, DigitsDataModule

    pl.seed_everything(0, verbose=False)
    proof = tmp_path / "proof"
    trainer = {"max_steps": 8, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
               "enable_model_summary": False, "default_root_dir": str(tmp_path),
               "callbacks": [{"class_path": "lightning_pol.ProofOfLearning", "init_args": {"dirpath": str(proof), "every_n_steps": 4}},
                             {"class_path": f"{__name__}.StampedHalving"}]}
    cli = LightningCLI(DigitsCNN, DigitsDataModule, run=False, args={"trainer": trainer, "model": {"width": 4}, "data": {"num_workers": 0}})
    with caplog.at_level(logging.WARNING, logger=WHERE):
        cli.trainer.fit(cli.model, cli.datamodule)
    (line,) = said(caplog)
    assert f"{__name__}:StampedHalving overrides on_before_optimizer_step" in line and "\n" not in line
    assert "re-created from its recipe it has serial=" in line and "the replay will not run it" in line
    manifest = ProofReader(proof).manifest
    assert manifest.callbacks == [] and manifest.training_values()["callbacks"] == [
        {"class": f"{__name__}:StampedHalving", "hooks": ["on_before_optimizer_step"]}]
