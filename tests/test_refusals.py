"""What the callback refuses, at construction or at fit start, and that nothing already written is lost."""

from __future__ import annotations

import pytest
from torch import nn

import tests.recreation_cases as cases
from lightning_pol import PoLError, ProofOfLearning, ProofReader
from lightning_pol.format.layout import MANIFEST
from tests.conftest import train_with_proof
from tests.unseen_project import UnseenDataModule, UnseenModule


@pytest.mark.parametrize("k", [0, -3, 1.5, True, "8"])
def test_nonpositive_or_non_integer_k_is_refused(tmp_path, k):
    with pytest.raises(PoLError, match="every_n_steps must be a positive integer"):
        ProofOfLearning(tmp_path, every_n_steps=k)


def test_unknown_init_strategy_is_refused(tmp_path):
    with pytest.raises(PoLError, match="unknown init_strategy 'lucky'"):
        ProofOfLearning(tmp_path, init_strategy="lucky")


def test_another_runs_proof_is_kept_unless_overwrite(tmp_path):
    fit = dict(every_n_steps=4, max_steps=4, max_epochs=-1)
    proof, _, _ = train_with_proof(tmp_path, UnseenModule, UnseenDataModule(num_workers=0), **fit)
    before = (proof / MANIFEST).read_bytes()
    with pytest.raises(PoLError, match="already holds the proof of run .*overwrite=True"):
        train_with_proof(tmp_path, UnseenModule, UnseenDataModule(num_workers=0), **fit)
    assert (proof / MANIFEST).read_bytes() == before
    assert ProofReader(proof).verify_files() == []
    train_with_proof(tmp_path, UnseenModule, UnseenDataModule(num_workers=0), pol_kwargs=dict(overwrite=True), seed=1, **fit)
    reader = ProofReader(proof)
    assert (proof / MANIFEST).read_bytes() != before and reader.verify_files() == []


def test_foreign_files_are_never_overwritten(tmp_path):
    (tmp_path / "proof").mkdir()
    (tmp_path / "proof" / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(PoLError, match="not a(?: lightning-pol)? proof"):
            train_with_proof(tmp_path, UnseenModule, UnseenDataModule(num_workers=0), max_steps=2, max_epochs=-1, pol_kwargs=dict(overwrite=overwrite))
        assert (tmp_path / "proof" / "notes.txt").read_text() == "mine"
    # A proof with the user's file beside it (named like the writer's temporaries, in a folder of the user's) is
    # not replaced either, and nothing of it is deleted: the refusal comes before any deletion.
    other = tmp_path / "other"
    proof, _, _ = train_with_proof(other, UnseenModule, UnseenDataModule(num_workers=0), max_steps=2, max_epochs=-1)
    (proof / "notes").mkdir()
    (proof / "notes" / ".tmp-draft.txt").write_text("mine")
    with pytest.raises(PoLError, match=r"not part of the old proof: \['notes/.tmp-draft.txt'\]"):
        train_with_proof(other, UnseenModule, UnseenDataModule(num_workers=0), max_steps=2, max_epochs=-1, pol_kwargs=dict(overwrite=True))
    assert (proof / "notes" / ".tmp-draft.txt").read_text() == "mine" and ProofReader(proof).verify_files() == ["unlisted file: notes/.tmp-draft.txt"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: cases.NoHparams(width=8), r"needs arguments \['width'\].*call self.save_hyperparameters\(\) in NoHparams.__init__"),
        (lambda: cases.ObjectHparam(backbone=nn.Linear(2, 2)), "not plain data.*save_hyperparameters\\(ignore="),
        (cases.GlobalWidth, r"has net.1.out_features=8, the module being trained net.1.out_features=16; .*save_hyperparameters"),
        (lambda: cases.LrAttribute(lr=0.5), r"has lr=0.01, the module being trained lr=0.5; .*save_hyperparameters\(\)"),
        (lambda: cases.LrInAClosure(lr=0.5), r"configures optimizer 0 with \[\{'lr': 0.01.*the module being trained with \[\{'lr': 0.5"),
    ],
    ids=["no-save-hyperparameters", "object-hparam", "architecture-not-in-hparams", "lr-attribute-not-recorded",
         "lr-only-in-the-optimizer"],
)
def test_modules_the_verifier_cannot_recreate_fail_at_fit_start(tmp_path, make, message, monkeypatch):
    monkeypatch.setattr(cases, "WIDTH", 16)
    module = make()
    monkeypatch.setattr(cases, "WIDTH", 8)  # the verifier would build a different width
    with pytest.raises(PoLError, match=message) as info:
        train_with_proof(tmp_path, module, UnseenDataModule(num_workers=0), max_steps=2, max_epochs=-1)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "proof").exists()


def test_classes_defined_in_a_function_are_refused(tmp_path):
    class LocalModule(UnseenModule):
        pass

    with pytest.raises(PoLError, match="LocalModule is defined in a function; define it at the top level of its module or script"):
        train_with_proof(tmp_path, LocalModule(), UnseenDataModule(num_workers=0), max_steps=2, max_epochs=-1)

    class LocalData(UnseenDataModule):
        pass

    with pytest.raises(PoLError, match="LightningDataModule LocalData is defined in a function"):
        train_with_proof(tmp_path, UnseenModule(), LocalData(num_workers=0), max_steps=2, max_epochs=-1)


@pytest.mark.parametrize("module", ["GlobalRandomData", "BoringModel"])
def test_data_drawn_from_the_global_rng_is_refused_at_fit_start(tmp_path, module):
    """The verifier's re-created train_dataloader() would draw other data: refused before anything is written."""
    from lightning.pytorch.demos.boring_classes import BoringModel

    make = BoringModel if module == "BoringModel" else getattr(cases, module)
    with pytest.raises(PoLError, match=r"yields other training data \(sample 0 differs\): it draws from the global RNG") as info:
        train_with_proof(tmp_path, make, None, max_steps=2, max_epochs=-1)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "proof").exists()


def test_a_module_that_makes_seeded_data_in_init_is_not_refused(tmp_path):
    from lightning_pol.verification.verifier import verify_proof

    proof, _, _ = train_with_proof(tmp_path, cases.DataInInit, None, max_steps=12, max_epochs=-1, every_n_steps=6)
    report = verify_proof(proof, q=0)
    assert report.valid and all(s.bit_exact for s in report.segments)
