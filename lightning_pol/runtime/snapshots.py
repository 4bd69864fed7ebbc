"""Host copies of the training state: the one copy a proof adds to memory, and the replay's states at its boundaries.

The training thread copies the state of a checkpoint into buffers that the
writer thread then hashes and writes; training goes on meanwhile. The buffers
are reused from one checkpoint to the next, so a fit allocates them once (and,
from a GPU, pins them once: pinning is slow), and at most ``slots`` copies of
the state exist at any time. A checkpoint due while every copy is still with
the writer waits for one: that wait is the backpressure that bounds memory.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch


class Snapshot:
    """One copy of a training state: ``state`` (a tree like the one taken, tensors in host memory) and ``ready``, the
    CUDA event to wait for before reading it (None: readable now). ``release()`` gives its buffers back."""

    def __init__(self, state: Any, ready: Any, release: Callable[[], None]) -> None:
        self.state, self.ready, self._release = state, ready, release

    def wait(self) -> None:
        if self.ready is not None:
            self.ready.synchronize()  # the copies from the GPU have landed

    def release(self) -> None:
        release, self._release = self._release, lambda: None
        release()


class SnapshotPool:
    """Reusable host buffers for ``slots`` snapshots of the training state.

    Example::

        pool = SnapshotPool(slots=1, failed=lambda: writer.error)
        snap = pool.take(state)            # training thread; waits while every slot is with the writer
        ...                                # writer thread: snap.wait(), write snap.state, then
        snap.release()

    A slot's buffers are kept by their place in the state (``("model", "fc.weight")``) and reused while
    shape and dtype stay the same. From a GPU the copies are non-blocking into pinned memory, on a side
    stream that first waits for the training stream; the training stream then waits (on the GPU, not the
    CPU) for the copies before its next kernels, which may change the tensors copied. ``copy_host=False``
    (a synchronous writer, which writes before training goes on) takes host tensors as they are: no copy at all.
    ``failed`` names the writer's error: a slot never comes back from a writer that failed, and ``take``
    raises that error instead of waiting for it.
    """

    def __init__(self, slots: int, failed: Callable[[], BaseException | None] = lambda: None, copy_host: bool = True) -> None:
        if slots < 1:
            raise ValueError("a snapshot pool needs at least one slot")
        self.copy_host = copy_host
        self._failed = failed
        self._free: list[dict[tuple[Any, ...], torch.Tensor]] = [{} for _ in range(slots)]
        self._cond = threading.Condition()

    def take(self, state: Any) -> Snapshot:
        """A copy of ``state`` that training cannot change (waits for a free slot)."""
        buffers = self._acquire()
        copier = _Copier(buffers, self.copy_host)
        try:
            out = copier.copy(state, ())
        except BaseException:
            self._give_back(buffers)
            raise
        for path in set(buffers) - copier.used:  # a tensor the state no longer holds
            del buffers[path]
        return Snapshot(out, copier.finish(), lambda: self._give_back(buffers))

    @property
    def free(self) -> int:
        with self._cond:
            return len(self._free)

    def _acquire(self) -> dict[tuple[Any, ...], torch.Tensor]:
        with self._cond:
            while not self._free:
                error = self._failed()
                if error is not None:
                    raise error
                self._cond.wait(timeout=0.05)
            return self._free.pop()

    def _give_back(self, buffers: dict[tuple[Any, ...], torch.Tensor]) -> None:
        with self._cond:
            self._free.append(buffers)
            self._cond.notify()



def snapshot_state(state: Any) -> tuple[Any, Any]:
    """A one-off copy of ``state`` in fresh host memory (the replay's state at a boundary, kept for judging), and the
    CUDA event to synchronize before reading it (None without GPU tensors)."""
    copier = _Copier({}, copy_host=True)
    out = copier.copy(state, ())
    return out, copier.finish()


@functools.lru_cache(maxsize=None)
def _side_stream(device: torch.device) -> Any:
    """The stream the copies from ``device`` run on, made on first use."""
    return torch.cuda.Stream(device)


class _Copier:
    """One snapshot's copy of a state tree into a slot's buffers."""

    def __init__(self, buffers: dict[tuple[Any, ...], torch.Tensor], copy_host: bool) -> None:
        self.buffers, self.copy_host = buffers, copy_host
        self.used: set[tuple[Any, ...]] = set()
        self.stream: Any = None

    def copy(self, obj: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(obj, torch.Tensor):
            return self.tensor(obj.detach(), path)
        if isinstance(obj, dict):
            items = {k: self.copy(v, (*path, k)) for k, v in obj.items()}
            return type(obj)(items) if isinstance(obj, OrderedDict) else items
        if isinstance(obj, list):
            return [self.copy(v, (*path, i)) for i, v in enumerate(obj)]
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return tuple(self.copy(v, (*path, i)) for i, v in enumerate(obj))
        return copy.deepcopy(obj)

    def tensor(self, t: torch.Tensor, path: tuple[Any, ...]) -> torch.Tensor:
        on_host = t.device.type == "cpu"
        if on_host and not self.copy_host:
            return t
        buf = self.buffers.get(path)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
            self.buffers[path] = buf
        self.used.add(path)
        if on_host:
            buf.copy_(t)
            return buf
        if not t.is_cuda:  # another accelerator: a blocking copy
            buf.copy_(t)
            return buf
        if self.stream is None:
            self.stream = _side_stream(t.device)
            self.stream.wait_stream(torch.cuda.current_stream(t.device))  # the copies see every kernel queued so far
        with torch.cuda.stream(self.stream):
            buf.copy_(t, non_blocking=True)
        return buf

    def finish(self) -> Any:
        """The event the writer waits for (None when nothing was copied from a GPU)."""
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record(self.stream)
        torch.cuda.current_stream().wait_event(event)  # training's next kernels may change what was copied
        return event
