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
from typing import Any, NamedTuple

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


def seed_everything_local(seed: int, python: bool = True) -> None:
    """Seed torch (CPU), numpy's legacy global RNG and (unless ``python=False``) Python ``random``.

    numpy takes the low 32 bits: its array seeding costs 8 µs a call, a third
    of the price of seeding a sample, and a sample's numpy stream needs no
    more than 32 bits (its seed is public, derived from a public proof seed).
    """
    torch.random.default_generator.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    if python:
        random.seed(seed)


class RawPythonState(NamedTuple):
    """Python's global ``random`` state as the bytes of its Mersenne Twister (``int index; uint32 state[624]``).

    ``random.getstate()`` builds a tuple of 625 ints (17 µs) and ``setstate``
    parses one (5 µs); the training stream does both every step, and the
    main-process fetch of every batch too. The generator lives in the
    ``random.Random`` object right after the object header, so it is copied
    as 2,500 bytes in well under a microsecond: only where that layout was
    confirmed at import, against ``getstate``/``setstate`` on a probe instance
    (:func:`_python_layout`). Elsewhere the states stay ``getstate()`` tuples.
    """

    raw: bytes
    gauss_next: float | None


_PY_STATE_BYTES = 4 + 624 * 4


def _python_layout() -> int | None:
    """Offset of the Mersenne Twister in a ``random.Random`` object, if reading and writing it there is confirmed."""
    try:
        probe = random.Random(2026)
        _, internal, _ = probe.getstate()
        expected = struct.pack("<i624I", internal[-1], *internal[:-1])
        for offset in (16, 32):  # after PyObject_HEAD: 16 bytes, 32 in a Py_TRACE_REFS build
            if ctypes.string_at(id(probe) + offset, _PY_STATE_BYTES) != expected:
                continue
            target = random.Random(1)
            ctypes.memmove(id(target) + offset, expected, _PY_STATE_BYTES)
            if target.getstate()[1] == internal and target.random() == probe.random():
                return offset
    except Exception:  # any doubt: the portable path
        return None
    return None


_PY_OFFSET = _python_layout()


def capture_python_rng() -> Any:
    """Python's global ``random`` state: a :class:`RawPythonState` where the layout is confirmed, else ``getstate()``."""
    inst = random._inst  # type: ignore[attr-defined]
    if _PY_OFFSET is None or type(inst) is not random.Random:
        return random.getstate()
    return RawPythonState(ctypes.string_at(id(inst) + _PY_OFFSET, _PY_STATE_BYTES), inst.gauss_next)


def restore_python_rng(saved: Any) -> None:
    """Inverse of :func:`capture_python_rng`; also takes ``getstate()`` tuples and checkpoints' portable form."""
    inst = random._inst  # type: ignore[attr-defined]
    if isinstance(saved, RawPythonState) and _PY_OFFSET is not None and type(inst) is random.Random:
        ctypes.memmove(id(inst) + _PY_OFFSET, saved.raw, _PY_STATE_BYTES)
        inst.gauss_next = saved.gauss_next
    else:
        random.setstate(_python_state(saved))


def _unseeded_marker() -> RawPythonState | None:
    if _PY_OFFSET is None:
        return None
    probe = random.Random(0x5EED)
    return RawPythonState(ctypes.string_at(id(probe) + _PY_OFFSET, _PY_STATE_BYTES), None)


#: Python's state while a sample is fetched without seeding Python's ``random``: the fetch drew from it if it moved.
_PY_MARKER = _unseeded_marker()


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Leave the caller's global RNG streams (torch CPU, numpy, random) as they were when the block started."""
    torch_state = torch.random.get_rng_state()
    np_state = np.random.get_state()
    py_state = capture_python_rng()
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        np.random.set_state(np_state)
        restore_python_rng(py_state)


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
        #: Seeding Python's ``random`` costs 7 µs, more than torch's and numpy's together, and few datasets
        #: draw from it. So it is seeded only once a fetch was seen drawing from it (see :meth:`fetch`).
        self.python_draws = _PY_MARKER is None
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
        restore_python_rng(_PY_MARKER)
        out = [self.dataset[i] for i in indices]
        if capture_python_rng() == _PY_MARKER:
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
                words = _numpy_words()
                self.numpy_draws = words is None  # numpy's words cannot be read here: always seed it
            if not self.python_draws:
                restore_python_rng(_PY_MARKER)
            generator, numpy_each, python_each = torch.random.default_generator, self.numpy_draws, self.python_draws
            out = []
            for i, seed in zip(indices, seeds):
                generator.manual_seed(seed)
                if numpy_each:
                    np.random.seed(seed & 0xFFFFFFFF)
                if python_each:
                    random.seed(seed)
                out.append(self.dataset[i])
            if not numpy_each and _numpy_words() != words:
                self.numpy_draws = True
            if not python_each and capture_python_rng() != _PY_MARKER:
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


def collect_rng_states(numpy: bool = True) -> dict[str, Any]:
    """The global RNG states that randomness inside a training step draws from (``numpy=False``: all but numpy's)."""
    states: dict[str, Any] = {
        "torch": torch.random.get_rng_state(),
        "numpy": np.random.get_state() if numpy else None,
        "python": capture_python_rng(),
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
    python = states["python"]
    if isinstance(python, dict):
        return states  # already portable: a state restored from a checkpoint, before the first step replaced it
    if isinstance(python, RawPythonState):  # getstate()'s order: the 624 words, then the index
        raw = np.frombuffer(python.raw, dtype=np.int32)
        words = torch.from_numpy(np.concatenate([raw[1:], raw[:1]]))
        return {**states, "python": {"version": 3, "state": words, "gauss_next": python.gauss_next}}
    version, internal, gauss_next = python
    words = torch.from_numpy(np.array(internal, dtype=np.uint32).view(np.int32))
    return {**states, "python": {"version": version, "state": words, "gauss_next": gauss_next}}


def _python_state(saved: Any) -> Any:
    if isinstance(saved, RawPythonState):
        raw = np.frombuffer(saved.raw, dtype=np.uint32)
        return (3, tuple(raw[1:].tolist()) + (int(np.frombuffer(saved.raw[:4], dtype=np.int32)[0]),), saved.gauss_next)
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
    restore_python_rng(states["python"])
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
