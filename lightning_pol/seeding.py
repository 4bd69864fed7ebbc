"""Counter-based seeds for samples, and capture/restore of the global RNG states.

Training and replay share this module. A sample's randomness (augmentation in
``Dataset.__getitem__``, whether it runs in the main process or in a worker)
is drawn from a seed that depends only on (proof seed, epoch, dataset index),
so a verifier rebuilds every sample exactly whatever its worker count or
order. The seed derivation is part of the proof format (docs/proof-format.md).
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

SAMPLE_DOMAIN = b"lightning-pol/sample-seed/v1"
COMMITMENT_DOMAIN = b"lightning-pol/commitment-seed/v1"


def counter_seed(domain: bytes, *counters: int) -> int:
    """A 63-bit seed from a domain tag and signed 64-bit counters (SHA-256 based)."""
    h = hashlib.sha256(domain)
    for c in counters:
        h.update(struct.pack("<q", int(c)))
    return int.from_bytes(h.digest()[:8], "little") >> 1


def sample_seed(proof_seed: int, epoch: int, index: int) -> int:
    """Seed of dataset sample ``index`` when it is drawn in ``epoch``."""
    return counter_seed(SAMPLE_DOMAIN, proof_seed, epoch, index)


def commitment_seed(index: int) -> int:
    """Seed under which sample ``index`` is hashed for the data commitment.

    It does not depend on the proof, so two proofs over the same data and
    transforms commit to the same leaves.
    """
    return counter_seed(COMMITMENT_DOMAIN, index)


def seed_everything_local(seed: int) -> None:
    """Seed torch (CPU), numpy's legacy global RNG and Python ``random``."""
    torch.random.default_generator.manual_seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF])
    random.seed(seed)


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Leave the caller's global RNG streams (torch CPU, numpy, random) as they were when the block started."""
    torch_state = torch.random.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under ``seed`` and leave the caller's RNG streams untouched."""
    with preserved_rng():
        seed_everything_local(seed)
        yield


class SeededDataset(Dataset):
    """Map-style dataset that fetches ``(epoch, index)`` keys under the sample's counter seed.

    The DataLoader's (batch) sampler is wrapped to yield such keys; the user's
    dataset still receives plain integer indices.
    """

    def __init__(self, dataset: Dataset, proof_seed: int) -> None:
        self.dataset = dataset
        self.proof_seed = int(proof_seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        seed = sample_seed(self.proof_seed, epoch, index)
        if torch.utils.data.get_worker_info() is not None:
            # A worker's global RNG serves only the samples it fetches, and each is seeded anew:
            # saving and restoring it around every sample would double the cost of a cheap sample.
            seed_everything_local(seed)
            return self.dataset[index]
        with seeded(seed):
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        # Attribute access falls through to the user's dataset (``classes``,
        # ``targets``...), but never dunders: torch's fetcher probes
        # ``__getitems__``, which must not bypass the per-sample seeding.
        if name.startswith("__") or name in ("dataset", "proof_seed"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def collect_rng_states() -> dict[str, Any]:
    """The global RNG states that randomness inside a training step draws from."""
    states: dict[str, Any] = {
        "torch": torch.random.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": [],
    }
    if torch.cuda.is_initialized():  # checked first: is_available() costs ~40 µs a call, and this runs every step
        states["cuda"] = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states`."""
    torch.random.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    cuda = states.get("cuda") or []
    if cuda:
        if not torch.cuda.is_available() or torch.cuda.device_count() < len(cuda):
            raise RuntimeError(f"the state holds {len(cuda)} CUDA RNG states but this machine has fewer devices")
        for i, s in enumerate(cuda):
            torch.cuda.set_rng_state(s, i)


class TrainingStream:
    """The RNG stream that training steps see, kept apart from draws made between steps.

    The prover and the verifier drive it from the same hooks: ``batch_start``
    at every batch start (restores the saved state, or adopts the current one
    the first time) and ``after_backward`` after every backward pass (saves).
    Draws between the two points of consecutive batches are undone.
    """

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state

    def batch_start(self) -> None:
        if self.state is None:
            self.state = collect_rng_states()
        else:
            restore_rng_states(self.state)

    def after_backward(self) -> None:
        self.state = collect_rng_states()
