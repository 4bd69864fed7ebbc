"""The global RNG streams: seeding, capture and restore, and the training stream kept apart from other draws.

Training and replay share this module: the prover saves the stream that a
step's randomness (dropout) draws from into each checkpoint, and the replay
restores it; :class:`TrainingStream` undoes draws made between steps on both
sides. The checkpoint layout of the states is docs/proof-format.md's ("The
RNG stream").
"""

from __future__ import annotations

import ctypes
import json
import random
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch

from lightning_pol.format.state_codec import decode_state, encode_state


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
PYTHON_MARKER = _unseeded_marker()


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


def restore_refusal(states: Any) -> str | None:
    """Why the RNG states of a checkpoint cannot be restored here, or None. Tried on the real generators (torch,
    numpy and ``random`` each refuse a bad state their own way), and the caller's CPU streams are put back."""
    try:
        with preserved_rng():
            restore_rng_states(states)
    except Exception as e:  # noqa: BLE001 - a state from a proof: whatever a generator says about it is the answer
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return None


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
        if words is not None and words == numpy_words():
            restore_rng_states(self.state, numpy=False)  # numpy drew nothing since the state was saved
        else:
            restore_rng_states(self.state)
            self._numpy_words = None

    def state_dict(self) -> dict[str, Any]:
        """The stream as a Lightning checkpoint holds it (tensors, and a typed-JSON tree as text)."""
        tensors, tree = encode_state({"rng": portable_rng_states(self.state)}) if self.state is not None else ({}, None)
        return {"stream_tensors": tensors, "stream_tree": json.dumps(tree)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TrainingStream:
        tree = json.loads(state["stream_tree"])
        return cls(decode_state(state["stream_tensors"], tree)["rng"] if tree is not None else None)

    def after_backward(self) -> None:
        words = numpy_words()
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


def numpy_words() -> bytes | None:
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
