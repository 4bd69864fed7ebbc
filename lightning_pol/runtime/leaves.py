"""The data commitment, computed: samples fetched under their commitment seeds and hashed into leaves.

The prover hashes the first epoch's samples as the DataLoader workers fetch
them (:class:`FirstEpochLeaves`) and the rest in a pass (:func:`compute_leaves`);
the verifier recomputes the leaves of the samples it replays (:func:`sample_leaf`)
or of the whole dataset. What a leaf is: :mod:`lightning_pol.format.samples`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_pol.format.samples import DIGEST_SIZE, UnhashableSampleError, leaf_hash
from lightning_pol.runtime.rng import preserved_rng
from lightning_pol.runtime.seeded_data import SeededDataset


class _LeafDataset(Dataset):
    """Leaves of samples, each fetched under its commitment seed, a batch at a time. The caller keeps its RNG
    streams (``preserved_rng`` around a loop, or a worker process whose RNG serves nothing else)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.seeded = SeededDataset(dataset, 0)  # fetches as epoch 0 of training does

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def digests(self, indices: list[int]) -> bytes:
        """The leaves of ``indices``, 32 bytes each, concatenated."""
        return b"".join([leaf_hash(sample) for sample in self.seeded.fetch_each(indices)])

    def __getitems__(self, indices: list[int]) -> list[bytes]:
        return [self.digests(list(indices))]  # one block a batch: _blocks joins them

    def __getitem__(self, index: int) -> bytes:
        return self.digests([index])


def _blocks(blocks: list[bytes]) -> torch.Tensor:
    """The DataLoader's collate_fn for :class:`_LeafDataset` batches: their leaves as ``[n, 32]``."""
    return torch.frombuffer(bytearray(b"".join(blocks)), dtype=torch.uint8).view(-1, DIGEST_SIZE)


def _fill(out: torch.Tensor, rows: Sequence[int], leaf: _LeafDataset, chunk: int = 256) -> None:
    """Hash the samples ``rows`` here into those rows of ``out``, ``chunk`` at a time."""
    view = out.numpy()
    for at in range(0, len(rows), chunk):
        part = list(rows[at : at + chunk])
        view[part] = np.frombuffer(leaf.digests(part), dtype=np.uint8).reshape(-1, DIGEST_SIZE)


def sample_leaf(dataset: Dataset, index: int) -> bytes:
    """The leaf of one sample: what a verifier recomputes for each replayed sample."""
    with preserved_rng():
        return _LeafDataset(dataset).digests([index])


class FirstEpochLeaves:
    """The leaves, hashed as the first training epoch fetches the samples.

    Epoch 0 fetches sample i under its commitment seed
    (:func:`~lightning_pol.seeding.commitment_seed`), so the sample it trains on
    is the committed one: hashing it there, in the DataLoader worker that
    fetched it, makes the commitment cost one hash a sample, off the training
    thread, instead of a pass over the data before training starts.

    The table lives in shared memory, so worker processes (forked or spawned)
    write into it. Only samples of batches that reached ``training_step`` are
    taken from it (:meth:`trained`): the worker wrote their rows before it sent
    the batch. Every other sample (never fetched in epoch 0, prefetched and
    dropped, or unhashable in the worker) is hashed here by :meth:`leaves`.
    """

    def __init__(self, size: int) -> None:
        # Column 32 says the row was written; it is set after the digest.
        self.table = torch.zeros((size, DIGEST_SIZE + 1), dtype=torch.uint8).share_memory_()
        self._bytes: memoryview | None = None
        self._trained: np.ndarray | None = np.zeros(size, dtype=bool)

    def __getstate__(self) -> dict[str, Any]:
        return {"table": self.table}  # a worker writes rows; what was trained is the main process's business

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.table, self._bytes, self._trained = state["table"], None, None

    def record(self, index: int, sample: Any) -> None:
        """Hash ``sample``, fetched in epoch 0 (in a worker or here), into row ``index``."""
        try:
            digest = leaf_hash(sample)
        except UnhashableSampleError:
            return  # left to leaves(), which raises it on the training thread
        if self._bytes is None:
            self._bytes = memoryview(self.table.numpy()).cast("B")  # the rows as one byte buffer: a slice write is cheapest
        at = index * (DIGEST_SIZE + 1)
        self._bytes[at : at + DIGEST_SIZE] = digest
        self._bytes[at + DIGEST_SIZE] = 1

    def trained(self, indices: Sequence[int]) -> None:
        """Samples of a batch that reached ``training_step`` in epoch 0."""
        assert self._trained is not None, "trained() is called in the process that owns the table"
        self._trained[indices] = True

    def trained_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, [m, 32] digests)`` of the rows of trained samples: what a DDP rank sends rank 0."""
        assert self._trained is not None, "trained_rows() is called in the process that owns the table"
        table = self.table.numpy()
        rows = np.flatnonzero(self._trained & (table[:, DIGEST_SIZE] == 1))
        return rows, table[rows, :DIGEST_SIZE].copy()

    def merge(self, indices: np.ndarray, digests: np.ndarray) -> None:
        """Take another rank's :meth:`trained_rows` as if this process had trained and hashed them."""
        assert self._trained is not None, "merge() is called in the process that owns the table"
        table = self.table.numpy()
        table[indices, :DIGEST_SIZE] = digests
        table[indices, DIGEST_SIZE] = 1
        self._trained[indices] = True

    def leaves(self, dataset: Dataset) -> torch.Tensor:
        """All leaves, ``[N, 32]``: rows of trained samples, and every other sample hashed here."""
        assert self._trained is not None, "leaves() is called in the process that owns the table"
        table = self.table.numpy()
        out = torch.from_numpy(table[:, :DIGEST_SIZE].copy())
        missing = np.flatnonzero(~(self._trained & (table[:, DIGEST_SIZE] == 1)))
        if missing.size:
            with preserved_rng():
                _fill(out, missing.tolist(), _LeafDataset(dataset))
        return out


def compute_leaves(
    dataset: Dataset,
    num_workers: int = 0,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    worker_threshold_s: float = 1.0,
) -> torch.Tensor:
    """Leaf hashes of every sample, as a ``uint8`` tensor of shape ``[len(dataset), 32]``.

    The first samples are hashed here; when the rest would take more than
    ``worker_threshold_s`` at that pace, it is hashed in ``num_workers``
    DataLoader workers, so a dataset with costly transforms is committed in
    parallel while a small one does not pay for starting worker processes.
    """
    n = len(dataset)  # type: ignore[arg-type]
    out = torch.empty((n, DIGEST_SIZE), dtype=torch.uint8)
    if n == 0:
        return out
    leaf = _LeafDataset(dataset)
    probe = min(n, batch_size)
    with preserved_rng():
        t = time.perf_counter()
        _fill(out, range(probe), leaf)
        pace = (time.perf_counter() - t) / probe
        if progress is not None:
            progress(probe)
        if probe == n:
            return out
        if num_workers == 0 or pace * (n - probe) < worker_threshold_s:
            for at in range(probe, n, batch_size):
                _fill(out, range(at, min(n, at + batch_size)), leaf)
                if progress is not None:
                    progress(min(n, at + batch_size))
            return out
    rest = Subset(leaf, range(probe, n))
    loader = DataLoader(rest, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_blocks)
    pos = probe
    for block in loader:
        out[pos : pos + len(block)] = block
        pos += len(block)
        if progress is not None:
            progress(pos)
    return out
