"""Validation-driven schedules: a ReduceLROnPlateau on val/loss replays exactly from the values the proof recorded."""

from __future__ import annotations

import json
import math
import shutil

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from lightning_pol import ProofOfLearning, ProofReader
from lightning_pol.format import layout as pf
from lightning_pol.format.manifest import Manifest
from lightning_pol.format.strict_json import ProofFormatError
from lightning_pol.format.writer import rewrite_manifest_json
from lightning_pol.verification.verifier import verify_proof
from lightning_pol.zoo.digits_data import DigitsDataModule
from tests.conftest import make_trainer
from tests.plateau_project import PlateauDigits

LR = 0.2


def prove(root, module_kwargs, every_n_steps, callbacks=(), ckpt_path=None, **trainer_kwargs):
    """Train PlateauDigits on 1,438 digits (23 batches of 64 an epoch), validating on 359, under the callback."""
    pl.seed_everything(0, verbose=False)
    module = PlateauDigits(lr=LR, **module_kwargs)
    trainer = make_trainer([*callbacks, ProofOfLearning(root / "proof", every_n_steps=every_n_steps)], root, **trainer_kwargs)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=64), ckpt_path=ckpt_path)
    return root / "proof", trainer


def monitored(proof):
    return json.loads((proof / pf.MANIFEST).read_text()).get("monitored")


def assert_every_segment_exact(report, crossing):
    assert report.valid, report.summary()
    spans = [(s.start_step, s.end_step) for s in report.segments]
    assert all(s.bit_exact for s in report.segments), report.summary()
    assert set(crossing) <= set(spans)
    plateau = report.checks["plateau"]
    assert plateau.passed and "fed the proof's" in plateau.summary and "recorded values of val/loss" in plateau.summary


@pytest.fixture(scope="module")
def epoch_proof(tmp_path_factory):
    root = tmp_path_factory.mktemp("epoch")
    return prove(root, {"interval": "epoch"}, every_n_steps=10, max_epochs=3)


def test_epoch_interval_plateau_replays_bit_exact_across_epoch_ends(epoch_proof):
    proof, trainer = epoch_proof
    values = monitored(proof)
    # One value per epoch end, consumed after steps 23, 46 and 69 (the last one before the final checkpoint).
    assert [(v["step"], v["scheduler"], v["monitor"], v["dtype"]) for v in values] == [
        (23, 0, "val/loss", "float32"), (46, 0, "val/loss", "float32"), (69, 0, "val/loss", "float32")]
    assert [v["value"] for v in values] == [float(v["value"]) for v in values]
    assert trainer.optimizers[0].param_groups[0]["lr"] == LR * 0.5 * 0.5  # it dropped after epochs 1 and 2
    report = verify_proof(proof, q=0)
    # 20->30, 40->50 cross the epoch ends; 60->69 ends with the last epoch's value.
    assert_every_segment_exact(report, [(20, 30), (40, 50), (60, 69)])


def test_step_interval_plateau_with_validation_within_epochs(tmp_path):
    # Validation every 8 batches, the scheduler stepped every 8 batches after it: values after steps 8, 16, 31, 39;
    # with k=4, 8 and 16 are segment boundaries and 31, 39 fall inside segments; 20->24 crosses the epoch end.
    proof, trainer = prove(tmp_path, {"interval": "step", "frequency": 8}, every_n_steps=4, max_epochs=2, val_check_interval=8)
    assert [v["step"] for v in monitored(proof)] == [8, 16, 31, 39]
    assert trainer.optimizers[0].param_groups[0]["lr"] == LR * 0.5**3
    report = verify_proof(proof, q=0)
    assert_every_segment_exact(report, [(4, 8), (8, 12), (16, 20), (20, 24), (28, 32), (36, 40)])


def test_a_recorded_value_that_changes_when_the_lr_drops_is_rejected(epoch_proof, tmp_path):
    proof = tmp_path / "proof"
    shutil.copytree(epoch_proof[0], proof)

    def better(m):  # epoch 1's loss a hundredth of epoch 0's: an improvement (threshold 0.9), so no drop after step 46
        m["monitored"][1]["value"] = m["monitored"][0]["value"] / 100

    rewrite_manifest_json(proof, better)
    report = verify_proof(proof, q=0)
    assert not report.valid
    assert report.checks["plateau"].passed  # a well-formed record: only the replay can tell
    assert report.checks["replay"].failed == [[40, 50]]


def test_recorded_values_round_trip_exactly_and_hostile_ones_are_refused(epoch_proof):
    raw = (epoch_proof[0] / pf.MANIFEST).read_bytes()
    assert Manifest.parse(raw).to_bytes() == raw  # the values, bit for bit, and the key order
    m = json.loads(raw)
    m["monitored"][1]["value"], m["monitored"][2]["value"] = {"__float__": "nan"}, {"__float__": "-inf"}
    edited = Manifest.from_json(m)
    assert math.isnan(edited.monitored[1].value) and edited.monitored[2].value == -math.inf
    assert Manifest.parse(edited.to_bytes()).to_bytes() == edited.to_bytes()
    first = m["monitored"][0]
    for bad in ({}, [1], [{**first, "value": 1}], [{**first, "value": True}], [{**first, "value": "0.5"}],
                [{**first, "value": {"__float__": "NaN"}}], [{**first, "step": -1}], [{**first, "step": 1.0}],
                [{**first, "scheduler": False}], [{**first, "monitor": ""}], [{**first, "monitor": 3}],
                [{**first, "dtype": "int64"}], [{**first, "extra": 0}], [{k: v for k, v in first.items() if k != "step"}],
                [{**first, "step": 5}, {**first, "step": 4}]):
        with pytest.raises(ProofFormatError, match="^manifest field monitored [^\n]*$"):
            Manifest.from_json({**m, "monitored": bad})


@pytest.mark.parametrize("index, change, reason", [
    (2, {"step": 70}, "is outside the proof's steps 1..69"),
    (0, {"step": 0}, "is outside the proof's steps 1..69"),
    (0, {"scheduler": 1}, "names LR scheduler 1"),
    (0, {"monitor": "train/loss"}, "which monitors 'val/loss'"),
])
def test_recorded_values_the_replay_cannot_feed_are_rejected_with_a_reason(epoch_proof, tmp_path, index, change, reason):
    proof = tmp_path / "proof"
    shutil.copytree(epoch_proof[0], proof)
    rewrite_manifest_json(proof, lambda m: m["monitored"][index].update(change))
    report = verify_proof(proof, q=1)  # the top segment of each epoch
    assert not report.valid
    assert report.checks["plateau"].passed is False
    assert not report.checks["replay"].passed
    assert any(reason in s.error for s in report.segments if s.error), report.summary()


def test_early_stopping_and_model_checkpoint_on_validation_metrics(tmp_path):
    # A second scheduler (StepLR, epoch interval) is stepped without a metric: its values are not recorded.
    stop = EarlyStopping(monitor="val/loss", mode="min", patience=0, min_delta=0.5)
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", mode="min", save_top_k=1)
    proof, trainer = prove(tmp_path, {"interval": "epoch", "second_scheduler": True}, every_n_steps=10,
                           callbacks=[stop, best], max_epochs=6, enable_checkpointing=True)
    assert trainer.current_epoch == 2 and trainer.global_step == 46  # stopped after the second validation
    assert best.best_model_path and (tmp_path / "ckpt").is_dir()
    reader = ProofReader(proof)
    assert reader.manifest.final_step == 46 and [c.step for c in reader.checkpoints] == [0, 10, 20, 30, 40, 46]
    assert [(v.step, v.scheduler) for v in reader.manifest.monitored] == [(23, 0), (46, 0)]
    assert_every_segment_exact(verify_proof(proof, q=0), [(20, 30), (40, 46)])

    def to_the_step_lr(m):  # a value for the StepLR, which Lightning steps without one
        m["monitored"][0]["scheduler"] = 1

    rewrite_manifest_json(proof, to_the_step_lr)
    report = verify_proof(proof, q=0)
    assert not report.valid and report.checks["plateau"].passed is False
    assert any("which configure_optimizers does not make a plateau scheduler" in (s.error or "") for s in report.segments)


class Crash(Exception):
    pass


class CrashAt(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 30:
            raise Crash


def test_a_resumed_run_keeps_the_values_its_lightning_checkpoint_had_consumed(tmp_path):
    # last.ckpt is saved when epoch 0's validation ends, before the scheduler consumes its value (after step 23):
    # the resumed run never consumes it, and the proof drops it with the crashed run's checkpoints after step 20.
    def run(callbacks, ckpt_path=None):
        saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1, save_top_k=-1)
        return prove(tmp_path, {"interval": "epoch"}, 10, [saver, *callbacks], max_epochs=3, enable_checkpointing=True,
                     ckpt_path=ckpt_path)

    with pytest.raises(Crash):
        run([CrashAt()])
    assert [v["step"] for v in monitored(tmp_path / "proof")] == [23]
    proof, _ = run([], ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert [v["step"] for v in monitored(proof)] == [46, 69]
    assert_every_segment_exact(verify_proof(proof, q=0), [(20, 30), (40, 50)])
