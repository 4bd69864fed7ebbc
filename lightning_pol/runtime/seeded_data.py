"""Fetching samples under their counter seeds: the dataset wrapper that training and replay both use."""

from __future__ import annotations

import random
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_pol.format.seeds import batch_seed, commitment_seed
from lightning_pol.runtime.rng import (
    PYTHON_MARKER,
    capture_python_rng,
    numpy_words,
    preserved_rng,
    restore_python_rng,
    seed_everything_local,
)


class SeededDataset(Dataset):
    """Map-style dataset that fetches ``(epoch, index)`` keys under their counter seeds.

    The DataLoader's (batch) sampler is wrapped to yield such keys, and its
    fetcher hands :meth:`__getitems__` one batch of keys; the user's dataset
    still receives plain integer indices. ``first_epoch``, when set (by the
    prover), receives every sample fetched in epoch 0 as
    ``first_epoch.record(index, sample)``: those are the committed samples
    (:class:`~lightning_pol.commitment.FirstEpochLeaves`).
    """

    def __init__(self, dataset: Dataset, proof_seed: int, first_epoch: Any = None) -> None:
        self.dataset = dataset
        self.proof_seed = int(proof_seed)
        self.first_epoch = first_epoch
        #: Seeding Python's ``random`` costs 7 µs, more than torch's and numpy's together, and few datasets
        #: draw from it. So it is seeded only once a fetch was seen drawing from it (see :meth:`fetch`).
        self.python_draws = PYTHON_MARKER is None
        #: Likewise numpy's, in epoch 0, where every sample has a seed of its own (see :meth:`fetch_each`).
        self.numpy_draws = False

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]  # a batch of one (a DataLoader with batch_size=None)

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        if not keys:
            return []
        epoch = keys[0][0]
        if any(k[0] != epoch for k in keys):
            raise ValueError("a batch holds keys of different epochs")
        indices = [k[1] for k in keys]
        # A worker's global RNG serves only the samples it fetches, each batch seeded anew: saving and
        # restoring it would only cost time. In the main process it is the training's: it is restored.
        with nullcontext() if torch.utils.data.get_worker_info() is not None else preserved_rng():
            if epoch != 0:
                return self.fetch(indices, batch_seed(self.proof_seed, epoch, indices))
            out = self.fetch_each(indices)
            if self.first_epoch is not None:
                for i, sample in zip(indices, out):
                    self.first_epoch.record(i, sample)
            return out

    def fetch(self, indices: list[int], seed: int) -> list[Any]:
        """``dataset[i]`` for each index, in order, from the streams of ``seed`` (the caller keeps its own streams).

        Python's ``random`` is left at a fixed marker state instead of being
        seeded. A fetch that leaves it there drew nothing from it, so its
        samples are what a seeded fetch gives. One that moved it is fetched
        again, seeded; from then on this dataset (in this process) is always seeded.
        """
        if self.python_draws:
            seed_everything_local(seed)
            return [self.dataset[i] for i in indices]
        seed_everything_local(seed, python=False)
        restore_python_rng(PYTHON_MARKER)
        out = [self.dataset[i] for i in indices]
        if capture_python_rng() == PYTHON_MARKER:
            return out
        self.python_draws = True
        return self.fetch(indices, seed)

    def fetch_each(self, indices: list[int]) -> list[Any]:
        """``dataset[i]`` for each index, each from the streams of its own commitment seed (epoch 0).

        Seeding numpy and Python's ``random`` for every sample would cost more
        than a small sample's fetch. So only torch is seeded per sample; numpy
        is seeded once, with the first sample's seed, and Python's ``random``
        left at its marker state. If neither moved over the batch, no sample
        drew from them, and each sample is what a fully seeded fetch gives (a
        draw always moves numpy's words from a freshly seeded state, which
        caches no Gaussian). Otherwise the batch is fetched again, fully
        seeded, and so is every later batch of this dataset (in this process).
        """
        seeds = [commitment_seed(i) for i in indices]
        if not (self.python_draws and self.numpy_draws):
            words = None
            if not self.numpy_draws:
                np.random.seed(seeds[0] & 0xFFFFFFFF)
                words = numpy_words()
                self.numpy_draws = words is None  # numpy's words cannot be read here: always seed it
            if not self.python_draws:
                restore_python_rng(PYTHON_MARKER)
            generator, numpy_each, python_each = torch.random.default_generator, self.numpy_draws, self.python_draws
            out = []
            for i, seed in zip(indices, seeds):
                generator.manual_seed(seed)
                if numpy_each:
                    np.random.seed(seed & 0xFFFFFFFF)
                if python_each:
                    random.seed(seed)
                out.append(self.dataset[i])
            if not numpy_each and numpy_words() != words:
                self.numpy_draws = True
            if not python_each and capture_python_rng() != PYTHON_MARKER:
                self.python_draws = True
            if (numpy_each, python_each) == (self.numpy_draws, self.python_draws):
                return out
        out = []
        for i, seed in zip(indices, seeds):
            seed_everything_local(seed)
            out.append(self.dataset[i])
        return out

    def __getattr__(self, name: str) -> Any:
        # Attribute access falls through to the user's dataset (``classes``,
        # ``targets``...), but never other dunders: they must not bypass the seeding.
        if name.startswith("__") or name in ("dataset", "proof_seed", "first_epoch", "python_draws", "numpy_draws"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
