"""Lightning's callbacks that change training, and manual optimization with two optimizers: replayed bit for bit.

Each run trains 3 epochs of 20 batches with k = 8, so the proof has checkpoints mid-epoch (8, 16, 24, ...) and
one at an epoch start after the callback acted (40: fine-tuning has unfrozen, SWA has averaged twice), and
segments that cross the epoch ends where pruning prunes and SWA runs its BatchNorm epoch.
"""

from __future__ import annotations

import logging
import sys

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import (
    BackboneFinetuning,
    GradientAccumulationScheduler,
    ModelPruning,
    StochasticWeightAveraging,
)

from lightning_pol import ProofOfLearning, ProofReader
from lightning_pol.errors import PoLError
from lightning_pol.format.writer import rewrite_manifest_json
from lightning_pol.verification.verifier import verify_proof
from lightning_pol.zoo.digits_data import DigitsDataModule
from tests.callback_project import BackboneDigits, DigitsGAN
from tests.conftest import make_trainer, write_checkpoint

WHERE = "lightning_pol.prover.other_callbacks"
BATCHES = 20  # a training epoch


def fit(tmp_path, module, *callbacks):
    pl.seed_everything(0, verbose=False)
    pol = ProofOfLearning(tmp_path / "proof", every_n_steps=8)
    make_trainer([pol, *callbacks], tmp_path, max_epochs=3, limit_train_batches=BATCHES).fit(module, DigitsDataModule(num_workers=0))
    return ProofReader(tmp_path / "proof")


def said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == WHERE and r.levelno >= logging.WARNING]


def swa_ended_averaged(reader: ProofReader) -> None:
    """3 epochs, then SWA's BatchNorm epoch as one step of every batch; the final weights are the average."""
    assert reader.manifest.final_step == 3 * BATCHES + 1
    last = reader.load_checkpoint(reader.checkpoints[-2])  # step 56, in the last epoch: averaged twice so far
    average = last["callbacks"][0]["state"]["average_model_state"]
    final = reader.load_checkpoint(reader.checkpoints[-1])["model"]
    assert last["callbacks"][0]["state"]["n_averaged"] == 3
    assert all(torch.equal(final[k], average[k]) for k in final if k.endswith(("weight", "bias")))


def accumulated_from_epoch_1(reader: ProofReader) -> None:
    log = reader.index_log()
    assert reader.manifest.final_step == BATCHES + 2 * BATCHES // 2
    assert [len(log.micro_batches(t)) for t in (0, BATCHES - 1, BATCHES, reader.manifest.final_step - 1)] == [1, 1, 2, 2]


def unfroze_at_epoch_1(reader: ProofReader) -> None:
    groups = [len(reader.load_checkpoint(e)["optimizers"][0]["param_groups"]) for e in reader.checkpoints]
    assert groups[:3] == [1, 1, 1] and set(groups[3:]) == {2}  # step 24 on: the backbone's group was added
    assert reader.load_checkpoint(reader.checkpoints[1])["callbacks"][0]["frozen"]  # the frozen set is recorded


def pruned_each_epoch(reader: ProofReader) -> None:
    final = reader.load_checkpoint(reader.checkpoints[-1])["model"]
    weights = torch.cat([v.flatten() for k, v in final.items() if k.endswith("weight") and v.dim() > 1])
    assert "head.2.weight" in final and float((weights == 0).float().mean()) == pytest.approx(1 - 0.8**3, abs=0.01)


CASES = {
    "swa": (lambda: StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=1), swa_ended_averaged),
    "accumulation": (lambda: GradientAccumulationScheduler({0: 1, 1: 2}), accumulated_from_epoch_1),
    "finetuning": (lambda: BackboneFinetuning(unfreeze_backbone_at_epoch=1), unfroze_at_epoch_1),
    "pruning": (lambda: ModelPruning("l1_unstructured", amount=0.2), pruned_each_epoch),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lightnings_callbacks_that_change_training_are_replayed_bit_exact(tmp_path, caplog, case):
    make, trained_as_asked = CASES[case]
    with caplog.at_level(logging.WARNING, logger=WHERE):
        reader = fit(tmp_path, BackboneDigits(), make())
    assert said(caplog) == []
    (spec,) = reader.manifest.callbacks
    assert spec.import_path.endswith(type(make()).__name__) and spec.instantiator == "hparams"
    assert "callbacks" not in reader.manifest.training_values()  # nothing is left unreplayed
    trained_as_asked(reader)
    report = verify_proof(reader.root, q=0)
    assert report.valid, report.reasons
    assert len(report.segments) == len(reader.checkpoints) - 1 and all(s.bit_exact for s in report.segments)


def test_a_replayed_callbacks_recorded_state_is_checked(tmp_path):
    """A proof that lies about a callback's state at one checkpoint (SWA's averaged weights) is rejected there."""
    reader = fit(tmp_path, BackboneDigits(), StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=1))
    entry = reader.manifest.checkpoint_at(32)
    state = reader.load_checkpoint(entry)
    for v in state["callbacks"][0]["state"]["average_model_state"].values():
        if v.is_floating_point():
            v.mul_(0.5)
    write_checkpoint(reader.root, entry.path, state)
    report = verify_proof(reader.root, q=0)
    assert not report.valid
    assert [(s.start_step, s.end_step) for s in report.segments if not s.bit_exact] == [(24, 32), (32, 40)]


def test_a_gan_under_manual_optimization_counts_a_step_a_batch_and_replays_bit_exact(tmp_path):
    reader = fit(tmp_path, DigitsGAN())
    m = reader.manifest
    assert m.final_step == 3 * BATCHES and [c.step for c in m.checkpoints] == [0, 8, 16, 24, 32, 40, 48, 56, 60]
    progress = reader.load_checkpoint(m.checkpoint_at(24))["progress"]
    assert progress["optimizer_steps"] == 48  # Lightning's global_step: the discriminator's and the generator's steps
    report = verify_proof(reader.root, q=0)
    assert report.valid and all(s.bit_exact for s in report.segments), report.reasons


def test_a_builtin_the_replay_cannot_reproduce_is_said_and_named_when_replay_fails(tmp_path, caplog):
    """Random pruning draws its masks from the global RNG between steps: warned at fit start, named at verification."""
    with caplog.at_level(logging.WARNING, logger=WHERE):
        reader = fit(tmp_path, BackboneDigits(), ModelPruning("random_unstructured", amount=0.2))
    (line,) = said(caplog)
    assert "lightning.pytorch.callbacks.pruning:ModelPruning overrides" in line and "cannot re-create" in line
    assert not reader.manifest.callbacks
    report = verify_proof(reader.root, q=0)
    assert not report.valid and any("ModelPruning" in r for r in report.reasons)


#: Classes a hostile proof names as a replayed callback, with arguments that would leave ``canary`` if they ran:
#: a process, this package's own callback, and one of Lightning's others, which writes where its arguments say
#: (a checkpoint into ``dirpath`` after every step) and changes no training. Past the gate, the replay's Trainer
#: (``enable_checkpointing=False``) would refuse a ModelCheckpoint too, as a failed replay (exit 1): exit 2 is the gate's.
HOSTILE_CALLBACKS = {
    "subprocess:Popen": lambda canary: {"args": [sys.executable, "-c", f"open({str(canary)!r}, 'w')"]},
    "lightning_pol.prover.callback:ProofOfLearning": lambda canary: {"dirpath": str(canary)},
    "lightning.pytorch.callbacks:ModelCheckpoint": lambda canary: {"dirpath": str(canary), "every_n_train_steps": 1},
}


@pytest.mark.parametrize("target", list(HOSTILE_CALLBACKS))
def test_a_callback_the_proof_names_goes_through_the_class_gate(tmp_path, monkeypatch, capsys, target):
    from lightning_pol.apps.verify import verify_with
    from lightning_pol.verification.settings import VerifierSettings

    reader = fit(tmp_path, BackboneDigits(), BackboneFinetuning(unfreeze_backbone_at_epoch=1))
    canary = tmp_path / "canary"

    def edit(m: dict) -> None:
        m["callbacks"][0] = {"class": target, "hparams": HOSTILE_CALLBACKS[target](canary)}

    rewrite_manifest_json(reader.root, edit, {})
    # verifier.code=report: the hostile class reaches the gate (under match the code check rejects it first, exit 1)
    code = verify_with(VerifierSettings(q=0, code="report"), reader.root, tmp_path / "verification.json")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "callback 0" in lines[0], lines
    assert not canary.exists()


class _Crash(Exception):
    pass


class _CrashInEpoch1(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 12:
            raise _Crash


def _run_resumable(root, callback, crash):
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = [ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_epochs=1, save_top_k=-1),
                 ProofOfLearning(root / "proof", every_n_steps=8), callback, *([_CrashInEpoch1()] if crash else [])]
    trainer = make_trainer(callbacks, root, max_epochs=3, limit_train_batches=BATCHES, enable_checkpointing=True)
    trainer.fit(BackboneDigits(), DigitsDataModule(num_workers=0), ckpt_path=None if crash else root / "ckpt" / "last.ckpt")


def test_a_run_with_swa_resumed_from_a_lightning_checkpoint_verifies_bit_exact(tmp_path):
    pl.seed_everything(0, verbose=False)
    with pytest.raises(_Crash):  # in epoch 1, after the proof's checkpoint 24; last.ckpt is from the end of epoch 0
        _run_resumable(tmp_path, StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=1), crash=True)
    _run_resumable(tmp_path, StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=1), crash=False)
    reader = ProofReader(tmp_path / "proof")
    swa_ended_averaged(reader)
    report = verify_proof(reader.root, q=0)
    assert report.valid and all(s.bit_exact for s in report.segments), report.reasons


def test_resuming_a_pruned_run_is_refused_before_the_proof_changes(tmp_path):
    """Lightning's resume drops ModelPruning's masks: the resumed run would not be the one the proof records."""
    pl.seed_everything(0, verbose=False)
    with pytest.raises(_Crash):
        _run_resumable(tmp_path, ModelPruning("l1_unstructured", amount=0.2), crash=True)
    before = (tmp_path / "proof" / "manifest.json").read_bytes()
    with pytest.raises(PoLError, match=r"resumes from a Lightning checkpoint with ModelPruning: .*without the masks"):
        _run_resumable(tmp_path, ModelPruning("l1_unstructured", amount=0.2), crash=False)
    assert (tmp_path / "proof" / "manifest.json").read_bytes() == before
