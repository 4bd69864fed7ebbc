"""Issue 2's acceptance, measured on a project lightning-pol has never seen (tests/unseen_project.py)."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_pol import ProofReader
from lightning_pol.format import layout as pf
from tests.conftest import train_with_proof
from tests.unseen_project import UnseenDataModule, UnseenModule


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("unseen")
    module = UnseenModule()
    proof, trained, initial = train_with_proof(
        root, module, UnseenDataModule(), every_n_steps=8, max_epochs=3, gradient_clip_val=1.0
    )
    return proof, trained, initial


def test_every_file_listed_with_correct_digest_and_nothing_else(run):
    proof, _, _ = run
    reader = ProofReader(proof)
    assert reader.manifest.status == pf.STATUS_COMPLETE
    assert reader.verify_files() == []
    on_disk = {p.relative_to(proof).as_posix() for p in proof.rglob("*") if p.is_file()}
    assert on_disk == set(reader.manifest.files) | {pf.MANIFEST}
    for rel, entry in reader.manifest.files.items():
        assert pf.sha256_file(proof / rel) == entry.sha256


def test_no_pickle_and_no_torch_zip(run):
    proof, _, _ = run
    for path in proof.rglob("*"):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        assert raw[:4] != b"PK\x03\x04", f"{path} looks like a torch.save zip"
        # Each file parses as what its name says, which a pickle does not (its first
        # byte, 0x80, can also be the low byte of a safetensors header length).
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert path.suffix == ".safetensors"
            n = int.from_bytes(raw[:8], "little")
            assert 8 + n <= len(raw), f"{path} is not a safetensors file"
            header = json.loads(raw[8 : 8 + n])
            ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
            assert 8 + n + max(ends, default=0) == len(raw), f"{path} is not a safetensors file"


def test_checkpoint_steps(run):
    proof, _, _ = run
    steps = [c.step for c in ProofReader(proof).checkpoints]
    assert steps == list(range(0, 171, 8)) + [171]


def test_first_and_last_checkpoints_hold_initial_and_trained_state(run):
    proof, trained, initial = run
    reader = ProofReader(proof)
    first = reader.load_checkpoint(reader.checkpoints[0])["model"]
    last = reader.load_checkpoint(reader.checkpoints[-1])["model"]
    final = trained.state_dict()
    assert list(first) == list(initial) and list(last) == list(final)
    for k in initial:
        assert first[k].dtype == initial[k].dtype and torch.equal(first[k], initial[k]), k
        assert torch.equal(last[k], final[k]), k
    assert any(not torch.equal(first[k], last[k]) for k in first)


def test_each_epoch_is_a_permutation_and_matches_what_training_step_saw(run):
    proof, trained, _ = run
    reader = ProofReader(proof)
    log = reader.index_log()
    indices, offsets = log.indices, log.offsets
    assert len(offsets) == 172
    runs = reader.manifest.sample_epochs
    assert runs == [[0, 0], [57, 1], [114, 2]]
    for first, nxt in zip([0, 57, 114], [57, 114, 171]):
        epoch = indices[offsets[first] : offsets[nxt]]
        assert torch.equal(epoch.sort().values, torch.arange(1797))
    steps = [indices[offsets[t] : offsets[t + 1]].tolist() for t in range(171)]
    assert steps == trained.seen
