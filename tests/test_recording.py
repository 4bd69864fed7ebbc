"""The index log against what training_step really received, across the DataLoader features users rely on."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from lightning_pol import PoLError, ProofReader, verify_proof
from tests.conftest import make_trainer, train_with_proof
from tests.unseen_project import UnseenDataModule, UnseenModule


def recorded_steps(proof):
    reader = ProofReader(proof)
    log = reader.index_log()
    indices, offsets = log.indices, log.offsets
    return reader, [indices[offsets[t] : offsets[t + 1]].tolist() for t in range(len(offsets) - 1)]


@pytest.mark.parametrize(
    "dm_kwargs, trainer_kwargs, steps",
    [
        (dict(num_workers=2, persistent_workers=True), dict(max_epochs=2), 2 * 57),
        (dict(num_workers=2, drop_last=True), dict(max_epochs=2), 2 * 56),
        (dict(num_workers=0), dict(max_epochs=2, accumulate_grad_batches=5), 2 * 12),
        (dict(num_workers=2, sampler="custom"), dict(max_epochs=1), 57),
        (dict(num_workers=2, sampler="batch_sampler"), dict(max_epochs=2), 2 * 113),
        (dict(num_workers=2), dict(max_epochs=3, limit_train_batches=10), 30),
        (dict(num_workers=2, persistent_workers=True), dict(max_steps=70, max_epochs=-1), 70),
        (dict(num_workers=2, every_rng=True), dict(max_epochs=2), 2 * 57),
    ],
    ids=["persistent-workers", "drop-last", "accumulation", "custom-sampler", "batch-sampler", "limit-batches", "max-steps-mid-epoch",
         "numpy-and-python-random-augmentation"],
)
def test_index_log_matches_training_step_and_the_proof_verifies(tmp_path, dm_kwargs, trainer_kwargs, steps):
    """What the README calls supported as is: recorded as training_step saw it, and every segment replays bit for bit."""
    proof, module, _ = train_with_proof(tmp_path, UnseenModule(), UnseenDataModule(**dm_kwargs), every_n_steps=7, **trainer_kwargs)
    reader, log = recorded_steps(proof)
    assert len(log) == steps == reader.manifest.final_step
    assert log == module.seen
    assert [c.step for c in reader.checkpoints] == sorted(set(range(0, steps, 7)) | {steps})
    report = verify_proof(proof, q=0)
    assert report.valid, report.summary()
    assert len(report.segments) == len(reader.checkpoints) - 1 and all(s.bit_exact for s in report.segments)


def test_accumulated_step_holds_all_its_micro_batches(tmp_path):
    proof, module, _ = train_with_proof(
        tmp_path, UnseenModule(), UnseenDataModule(num_workers=0), max_epochs=1, accumulate_grad_batches=5
    )
    _, log = recorded_steps(proof)
    # 57 batches of 32 (the last one 5 samples): 11 steps of 5 micro-batches, then one of 2.
    assert [len(s) for s in log] == [160] * 11 + [32 + 5]
    assert sorted(i for s in log for i in s) == list(range(1797))


def test_drop_last_leaves_out_the_partial_batch(tmp_path):
    proof, _, _ = train_with_proof(tmp_path, UnseenModule(), UnseenDataModule(num_workers=2, drop_last=True), max_epochs=1)
    _, log = recorded_steps(proof)
    assert all(len(s) == 32 for s in log) and len(log) == 56
    assert len(set(i for s in log for i in s)) == 56 * 32


class Stream(IterableDataset):
    def __iter__(self):
        for i in range(64):
            yield torch.zeros(1, 8, 8), i % 10, i


class StreamDataModule(UnseenDataModule):
    def train_dataloader(self):
        return DataLoader(Stream(), batch_size=16)


def test_iterable_dataset_is_refused_as_unsupported(tmp_path):
    with pytest.raises(PoLError, match="unsupported: an IterableDataset"):
        train_with_proof(tmp_path, UnseenModule(), StreamDataModule(), max_epochs=1)
    assert not (tmp_path / "proof" / "manifest.json").exists()


def test_dataloaders_handed_to_fit_from_no_project_script_are_refused(tmp_path):
    from lightning_pol import ProofOfLearning

    dm = UnseenDataModule(num_workers=0)
    dm.setup()
    trainer = make_trainer([ProofOfLearning(tmp_path / "proof", every_n_steps=4)], tmp_path, max_steps=2)
    # handed to fit in a test process: pytest's own __main__ is no script the verifier could run to fit again
    with pytest.raises(PoLError, match="the training DataLoader handed to fit comes from a process that installed code started"):
        trainer.fit(UnseenModule(), train_dataloaders=dm.train_dataloader())
    assert not (tmp_path / "proof").exists()


def test_module_that_supplies_its_own_data(tmp_path):
    from tests.unseen_project import SelfFeedingModule

    proof, module, _ = train_with_proof(tmp_path, SelfFeedingModule, None, every_n_steps=5, max_epochs=1)
    reader, log = recorded_steps(proof)
    assert log == module.seen and len(log) == 29
    assert reader.manifest.datamodule is None and reader.manifest.training["data_source"] == "module"
    assert reader.manifest.module.import_path == "tests.unseen_project:SelfFeedingModule"


def test_micro_batch_boundaries_are_recorded(tmp_path):
    proof, module, _ = train_with_proof(
        tmp_path, UnseenModule, UnseenDataModule(num_workers=2, sampler="batch_sampler"), max_epochs=1, accumulate_grad_batches=2
    )
    log = ProofReader(proof).index_log()
    sizes = [[len(b) for b in log.micro_batches(t)] for t in range(log.steps)]
    # GrowingBatches yields 8, 16, 24, 8, ...; two of them make one step
    assert sizes[:3] == [[8, 16], [24, 8], [16, 24]]
    assert [i for t in range(log.steps) for b in log.micro_batches(t) for i in b] == log.indices.tolist()
    assert log.batches_before(3) == 6
