"""The data commitment: leaves over real samples, single-sample checks, tampering, inclusion proofs."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
import torch

from lightning_pol import ProofReader
from lightning_pol.format.samples import (
    UnhashableSampleError,
    canonical_chunks,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    root_of,
    verify_inclusion,
)
from lightning_pol.runtime import leaves as commitment
from lightning_pol.runtime.leaves import compute_leaves, sample_leaf
from tests.conftest import train_with_proof
from tests.unseen_project import NoisyDigits, UnseenDataModule, UnseenModule


@pytest.fixture(scope="module")
def proof(tmp_path_factory):
    root = tmp_path_factory.mktemp("commit")
    proof, _, _ = train_with_proof(root, UnseenModule, UnseenDataModule(num_workers=2), max_steps=3, max_epochs=-1)
    return ProofReader(proof)


def test_leaves_and_root_match_the_training_data(proof):
    leaves = proof.leaves()
    assert leaves.shape == (1797, 32)
    assert root_of(leaves) == proof.manifest.data.root
    data = NoisyDigits(augment=True)
    assert torch.equal(compute_leaves(data, num_workers=0), leaves)
    for i in (0, 123, 1796):
        assert sample_leaf(data, i) == bytes(leaves[i].tolist())


@pytest.mark.parametrize(
    "dm_kwargs, not_trained",
    [(dict(num_workers=0), 0), (dict(num_workers=2, drop_last=True), 1797 % 32), (dict(num_workers=2, persistent_workers=True), 0)],
    ids=["main-process", "workers-drop-last", "persistent-workers"],
)
def test_first_epoch_fetches_are_hashed_into_the_commitment(tmp_path, monkeypatch, dm_kwargs, not_trained):
    """The leaves hashed as epoch 0 fetched its samples (in workers or here) equal a pass over the data,
    and the prover hashes on the training thread only sample 0 (its early check), what epoch 0 did not train on,
    and the fit-start rehearsal's 4 samples (0, 1, n/2, n-1) of the re-created and of the live data."""
    here = []
    digests = commitment._LeafDataset.digests
    monkeypatch.setattr(commitment._LeafDataset, "digests", lambda self, indices: (here.extend(indices), digests(self, indices))[1])
    proof, _, _ = train_with_proof(tmp_path, UnseenModule, UnseenDataModule(**dm_kwargs), max_epochs=2)
    assert len(here) == 1 + not_trained + 2 * 4
    reader = ProofReader(proof)
    assert reader.manifest.status == "complete"
    assert torch.equal(reader.leaves(), compute_leaves(NoisyDigits(augment=True)))
    assert root_of(reader.leaves()) == reader.manifest.data.root


def test_one_changed_value_or_label_changes_exactly_that_leaf(proof):
    leaves = proof.leaves()
    data = NoisyDigits(augment=True)
    data.x[123, 0, 4, 4] += 1 / 16
    changed = compute_leaves(data)
    assert (changed != leaves).any(dim=1).nonzero().flatten().tolist() == [123]
    assert root_of(changed) != proof.manifest.data.root
    data = NoisyDigits(augment=True)
    data.y[7] = (data.y[7] + 1) % 10
    assert (compute_leaves(data) != leaves).any(dim=1).nonzero().flatten().tolist() == [7]


def test_canonical_form_tells_types_and_shapes_apart():
    forms = [1, 1.0, True, "1", b"1", torch.tensor(1), torch.tensor([1]), torch.tensor(1.0), np.int64(1), [1], (1, 1), {"a": 1}, None]
    assert len({leaf_hash(f) for f in forms}) == len(forms)
    assert leaf_hash([1, 1]) == leaf_hash((1, 1))
    assert leaf_hash({"a": 1, "b": 2}) == leaf_hash({"b": 2, "a": 1})
    assert leaf_hash(torch.zeros(2, 3)) != leaf_hash(torch.zeros(3, 2))
    with pytest.raises(UnhashableSampleError):
        leaf_hash(object())


def _spec_encoding(sample) -> bytes:
    """sample-v1 written from docs/proof-format.md alone, for (tensor, int) samples and lists of them."""
    u64 = lambda n: struct.pack("<Q", n)  # noqa: E731
    if isinstance(sample, (tuple, list)):
        return b"l" + u64(len(sample)) + b"".join(_spec_encoding(v) for v in sample)
    if isinstance(sample, bool):
        return b"b" + bytes([sample])
    if isinstance(sample, int):
        return b"i" + u64(len(str(sample))) + str(sample).encode()
    t = sample.detach().contiguous()
    name = str(t.dtype).removeprefix("torch.").encode()
    data = t.numpy().tobytes()
    return b"T" + u64(len(name)) + name + u64(t.dim()) + b"".join(u64(d) for d in t.shape) + u64(len(data)) + data


def test_canonical_form_is_the_documented_bytes_on_every_path():
    # The encoder has a fast path for exact types, taken from the second tensor of a dtype and shape on.
    x = torch.arange(64, dtype=torch.float32).reshape(1, 8, 8) - 31.5
    samples = [(x, 3), (x + 1, -7), (x.transpose(1, 2), 3), (x.clone().requires_grad_(), 0), (torch.tensor(2.5), 5),
               (torch.zeros(0, 3), 1), [x.to(torch.uint8), True], (x[:, ::2], 10**30), (torch.nn.Parameter(x), 1)]
    for _ in range(2):
        for sample in samples:
            assert leaf_hash(sample) == hashlib.sha256(b"\x00" + _spec_encoding(sample)).digest(), sample
            assert b"".join(canonical_chunks(sample)) == _spec_encoding(sample)


def test_inclusion_proofs_for_every_tree_size():
    for n in (1, 2, 3, 5, 8, 13, 64, 100):
        leaves = [hashlib.sha256(bytes([i % 256, i // 256])).digest() for i in range(n)]
        root = merkle_root(leaves)
        for i in range(n):
            path = inclusion_proof(leaves, i)
            assert verify_inclusion(leaves[i], i, n, path, root)
            assert not verify_inclusion(hashlib.sha256(b"x").digest(), i, n, path, root)


def test_first_epoch_table_reaches_spawned_workers():
    """Under the spawn start method the table is pickled to the workers; their rows must land in this process."""
    from torch.utils.data import DataLoader

    from lightning_pol.prover.instrumentation import instrument_loader
    from lightning_pol.runtime.leaves import FirstEpochLeaves

    data = NoisyDigits(augment=True)
    loader = DataLoader(data, batch_size=128, shuffle=True, num_workers=2, multiprocessing_context="spawn")
    table = FirstEpochLeaves(len(data))
    recorder = instrument_loader(loader, 7, lambda: 0, table)
    for _ in loader:
        table.trained(recorder.pop()[1])
    assert int(table.table[:, 32].sum()) == len(data)  # every row written by a worker
    assert torch.equal(table.leaves(data), compute_leaves(data))
