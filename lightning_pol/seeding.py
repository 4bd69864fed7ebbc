"""Counter-based seeds for samples, and capture/restore of the global RNG states.

Training and replay share this module. The randomness of the samples
(augmentation in ``Dataset.__getitem__``, whether it runs in the main process
or in a worker) is drawn from seeds that depend only on what the proof
records: in epoch 0, each sample's commitment seed (its dataset index); in
later epochs, one seed per batch from (proof seed, epoch, the batch's
indices), its samples fetched in order. A verifier, which replays recorded
batches, rebuilds every sample exactly whatever its worker count or order.
The seed derivation is part of the proof format (docs/proof-format.md).
"""

from __future__ import annotations

import ctypes
import hashlib
import random
import struct
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

BATCH_DOMAIN = b"lightning-pol/batch-seed/v1"
COMMITMENT_DOMAIN = b"lightning-pol/commitment-seed/v1"


def counter_seed(domain: bytes, *counters: int) -> int:
    """A 63-bit seed from a domain tag and signed 64-bit counters (SHA-256 based)."""
    h = hashlib.sha256(domain)
    for c in counters:
        h.update(struct.pack("<q", int(c)))
    return int.from_bytes(h.digest()[:8], "little") >> 1


def batch_seed(proof_seed: int, epoch: int, indices: list[int]) -> int:
    """Seed of a batch drawn in ``epoch`` (>= 1): its samples are fetched in order from one stream.

    One seeding a batch instead of one a sample: seeding three generators costs
    more than fetching a small sample, and a replay fetches whole recorded
    batches anyway.
    """
    h = hashlib.sha256(BATCH_DOMAIN)
    h.update(struct.pack(f"<{len(indices) + 3}q", int(proof_seed), int(epoch), len(indices), *indices))
    return int.from_bytes(h.digest()[:8], "little") >> 1


def commitment_seed(index: int) -> int:
    """Seed under which sample ``index`` is hashed for the data commitment, and fetched in epoch 0.

    It does not depend on the proof, so two proofs over the same data and
    transforms commit to the same leaves. Epoch 0 fetches each sample under
    it, so the first epoch trains on exactly the committed samples and the
    prover hashes them as they are fetched, instead of in a pass of its own.
    """
    return counter_seed(COMMITMENT_DOMAIN, index)


def seed_everything_local(seed: int) -> None:
    """Seed torch (CPU), numpy's legacy global RNG and Python ``random``.

    numpy takes the low 32 bits: its array seeding costs 8 µs a call, a third
    of the price of seeding a sample, and a sample's numpy stream needs no
    more than 32 bits (its seed is public, derived from a public proof seed).
    """
    torch.random.default_generator.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
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
                seed_everything_local(batch_seed(self.proof_seed, epoch, indices))
                return [self.dataset[i] for i in indices]
            out = []
            for i in indices:
                seed_everything_local(commitment_seed(i))
                sample = self.dataset[i]
                if self.first_epoch is not None:
                    self.first_epoch.record(i, sample)
                out.append(sample)
            return out

    def __getattr__(self, name: str) -> Any:
        # Attribute access falls through to the user's dataset (``classes``,
        # ``targets``...), but never other dunders: they must not bypass the seeding.
        if name.startswith("__") or name in ("dataset", "proof_seed", "first_epoch"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def collect_rng_states(numpy: bool = True) -> dict[str, Any]:
    """The global RNG states that randomness inside a training step draws from (``numpy=False``: all but numpy's)."""
    states: dict[str, Any] = {
        "torch": torch.random.get_rng_state(),
        "numpy": np.random.get_state() if numpy else None,
        "python": random.getstate(),
        "cuda": [],
    }
    if torch.cuda.is_initialized():  # checked first: is_available() costs ~40 µs a call, and this runs every step
        states["cuda"] = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    return states


def portable_rng_states(states: dict[str, Any]) -> dict[str, Any]:
    """``states`` as a checkpoint stores them: Python's ``random`` state becomes a tensor.

    ``random.getstate()`` is a tuple of 625 integers; kept as a tensor it is
    2.5 KB of a checkpoint's tensors instead of 7 KB of its JSON tree, and
    one object to copy and encode instead of 625.
    """
    if isinstance(states["python"], dict):
        return states  # already portable: a state restored from a checkpoint, before the first step replaced it
    version, internal, gauss_next = states["python"]
    words = torch.from_numpy(np.array(internal, dtype=np.uint32).view(np.int32))
    return {**states, "python": {"version": version, "state": words, "gauss_next": gauss_next}}


def _python_state(saved: Any) -> Any:
    if not isinstance(saved, dict):
        return saved  # as random.getstate() returns it
    words = saved["state"]
    if not isinstance(words, torch.Tensor) or words.dtype != torch.int32 or words.dim() != 1:
        raise ValueError("the Python random state is not a 1-D int32 tensor")
    return (saved["version"], tuple(words.numpy().view(np.uint32).tolist()), saved["gauss_next"])


def restore_rng_states(states: dict[str, Any], numpy: bool = True) -> None:
    """Inverse of :func:`collect_rng_states` (and of :func:`portable_rng_states`)."""
    torch.random.set_rng_state(states["torch"])
    if numpy:
        np.random.set_state(states["numpy"])
    random.setstate(_python_state(states["python"]))
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

    numpy's ``get_state``/``set_state`` cost 70 µs a step, more than the rest
    together, and most training steps never draw from numpy. So numpy's state
    is read in full only when its raw Mersenne Twister words (2.5 KB, read in
    0.4 µs) moved, and restored only when they moved since it was saved. The
    words alone miss one kind of draw: a legacy Gaussian served from numpy's
    cache, which changes no word. That draw needs a cached value, so the
    shortcut is taken only while the saved state holds none (``has_gauss == 0``).
    """

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state
        self._numpy_words: bytes | None = None  # numpy's words when ``state["numpy"]`` was read, if it caches no Gaussian

    def batch_start(self) -> None:
        if self.state is None:
            self.state = collect_rng_states()
            return
        words = self._numpy_words
        if words is not None and words == _numpy_words():
            restore_rng_states(self.state, numpy=False)  # numpy drew nothing since the state was saved
        else:
            restore_rng_states(self.state)
            self._numpy_words = None

    def after_backward(self) -> None:
        words = _numpy_words()
        saved = self.state
        if words is not None and words == self._numpy_words and saved is not None:
            states = collect_rng_states(numpy=False)
            states["numpy"] = saved["numpy"]  # unchanged since it was read
        else:
            states = collect_rng_states()
            self._numpy_words = words if words is not None and states["numpy"][3] == 0 else None
        self.state = states


_MT_WORDS = 624 * 4 + 4  # numpy's mt19937_state: uint32 key[624], int pos
_numpy_source: tuple[Any, int] | None = None


def _numpy_words() -> bytes | None:
    """The raw words of numpy's legacy global generator, or None where they cannot be read."""
    global _numpy_source
    try:
        bitgen = np.random.mtrand._rand._bit_generator
    except AttributeError:
        return None
    if _numpy_source is None or _numpy_source[0] is not bitgen:
        if type(bitgen).__name__ != "MT19937":
            return None
        _numpy_source = (bitgen, bitgen.ctypes.state_address)
    return ctypes.string_at(_numpy_source[1], _MT_WORDS)
