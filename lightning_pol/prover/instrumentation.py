"""The training DataLoader, instrumented: which dataset indices fed each batch, each sample fetched under its seed.

:class:`LoaderInstrumentation` is what the callback holds: it routes the
training loader through :func:`instrument_loader` once Lightning has prepared
it, and undoes it at the end. The DataLoader asks its batch sampler for index lists in the main process and
delivers the batches in the same order (``in_order=True``), even with worker
processes, persistent workers and prefetching. So the wrapper queues every
index list it yields, and the callback pops one list per batch that actually
reaches ``training_step``. Batches that were prefetched but never trained on
(``limit_train_batches``, ``max_steps``) are dropped when the next epoch's
iteration starts.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from numbers import Integral
from typing import Any

import lightning.pytorch as pl

from lightning_pol.errors import PoLError
from lightning_pol.runtime.leaves import FirstEpochLeaves
from lightning_pol.runtime.loader_hook import (
    UnsupportedDataError,
    patch_train_dataloader,
)
from lightning_pol.runtime.seeded_data import SeededDataset

log = logging.getLogger(__name__)


class RecordingSampler:
    """Yields ``(epoch, index)`` keys for :class:`~lightning_pol.runtime.seeded_data.SeededDataset` and remembers the indices.

    ``batched`` is True when wrapping a batch sampler (each item is a list of
    indices) and False when wrapping a plain sampler (``batch_size=None``:
    each item is one sample and one batch).
    """

    def __init__(self, inner: Iterable[Any], batched: bool, epoch_fn: Callable[[], int]) -> None:
        self.inner = inner
        self.batched = batched
        #: Gives the epoch whose sample seeds an iteration uses, read when it starts.
        self.epoch_fn = epoch_fn
        self._pending: deque[tuple[int, list[int]]] = deque()
        self._generation = 0

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        self._generation += 1
        generation = self._generation
        self._pending.clear()
        epoch = int(self.epoch_fn())
        for item in self.inner:
            indices = [_as_index(i) for i in item] if self.batched else [_as_index(item)]
            if generation == self._generation:
                self._pending.append((epoch, indices))
            keys = [(epoch, i) for i in indices]
            yield keys if self.batched else keys[0]

    def pop(self) -> tuple[int, list[int]]:
        """(seed epoch, indices) of the oldest batch yielded and not yet trained on."""
        if not self._pending:
            raise RuntimeError(
                "a training batch arrived that the recorded sampler never produced; "
                "is the DataLoader iterated outside Lightning's training loop?"
            )
        return self._pending.popleft()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("inner", "batched", "epoch_fn", "_pending", "_generation"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def _as_index(i: Any) -> int:
    if type(i) is int:  # the common case, first: this runs for every sample in the main process
        return i
    if isinstance(i, bool) or not isinstance(i, Integral):
        if hasattr(i, "item") and getattr(i, "ndim", 1) == 0:
            return _as_index(i.item())
        raise UnsupportedDataError(
            f"the sampler yielded {type(i).__name__} {i!r}; a proof records integer dataset indices only"
        )
    return int(i)


def instrument_loader(loader: Any, proof_seed: int, epoch_fn: Callable[[], int], first_epoch: Any = None) -> RecordingSampler:
    """Make ``loader`` record its batches and seed every sample from its counter.

    The DataLoader is changed in place (its sampler and dataset are wrapped),
    before it is first iterated, so that worker processes receive the wrapped
    dataset; ``first_epoch`` receives the samples epoch 0 fetches
    (:class:`~lightning_pol.runtime.seeded_data.SeededDataset`). Returns the recorder.
    """
    from torch.utils.data import DataLoader, IterableDataset

    if not isinstance(loader, DataLoader):
        raise UnsupportedDataError(
            f"the training data is a {type(loader).__name__}; a proof needs one torch DataLoader "
            "over a map-style dataset from train_dataloader()"
        )
    if isinstance(loader.dataset, IterableDataset):
        raise UnsupportedDataError(
            "unsupported: an IterableDataset yields no dataset indices, so its batches cannot be recorded; "
            "use a map-style Dataset with a sampler"
        )
    if isinstance(loader.dataset, SeededDataset):
        raise UnsupportedDataError("this DataLoader is already recorded by another ProofOfLearning callback")
    if getattr(loader, "in_order", True) is False:
        raise UnsupportedDataError("DataLoader(in_order=False) delivers batches out of order; a proof needs in_order=True")
    batched = loader.batch_sampler is not None
    recorder = RecordingSampler(loader.batch_sampler if batched else loader.sampler, batched, epoch_fn)
    # DataLoader forbids re-assigning these after __init__; it only reads them
    # when an iterator is created, which has not happened yet.
    object.__setattr__(loader, "batch_sampler" if batched else "sampler", recorder)
    object.__setattr__(loader, "dataset", SeededDataset(loader.dataset, proof_seed, first_epoch))
    return recorder


def uninstrument_loader(loader: Any) -> None:
    """Undo :func:`instrument_loader` (used at teardown, so the user's objects are left as they were)."""
    for name in ("batch_sampler", "sampler"):
        value = getattr(loader, name, None)
        if isinstance(value, RecordingSampler):
            object.__setattr__(loader, name, value.inner)
    if isinstance(getattr(loader, "dataset", None), SeededDataset):
        object.__setattr__(loader, "dataset", loader.dataset.dataset)
    # Persistent workers still hold the wrapped dataset; let the next iteration start fresh ones.
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None:
        getattr(iterator, "_shutdown_workers", lambda: None)()
        loader._iterator = None


class LoaderInstrumentation:
    """The training DataLoader of one fit, recorded and seeded; touched by the training thread only.

    ``attach`` (in ``setup``) routes the loader Lightning prepares through
    :func:`instrument_loader`; a loader prepared again (a reload) replaces the
    last one. The first loader of a fresh run also hashes the samples epoch 0
    fetches (:class:`~lightning_pol.runtime.leaves.FirstEpochLeaves`), until
    :meth:`take_first_epoch`. ``detach`` leaves the user's objects as they were.
    """

    def __init__(self, seed: Callable[[], int]) -> None:
        #: The proof seed, resolved when the first loader is instrumented (a resume restores it before).
        self.seed = seed
        self.loader: Any = None
        self.recorder: RecordingSampler | None = None
        self.first_epoch: FirstEpochLeaves | None = None
        self._unpatch: Callable[[], None] | None = None
        self._trainer: pl.Trainer | None = None
        self._hash_first_epoch = False
        self._resume_epoch: int | None = None
        self._iter_epoch: int | None = None

    def attach(self, trainer: pl.Trainer, hash_first_epoch: bool, resume_epoch: int | None = None) -> None:
        """Instrument the training loader Lightning is about to prepare; ``hash_first_epoch`` for a fresh run."""
        self._trainer = trainer
        self._hash_first_epoch = hash_first_epoch
        self._unpatch = patch_train_dataloader(trainer, self._instrument)

    def resume_at(self, epoch: int | None) -> None:
        """A resumed run's first iteration draws with this epoch's seeds (the loop counters are restored later)."""
        self._resume_epoch = epoch
        self._hash_first_epoch = False

    def _instrument(self, loader: Any) -> Any:
        if self.loader is not None:
            uninstrument_loader(self.loader)
        if self._hash_first_epoch:  # a fresh run's first loader
            self._hash_first_epoch = False
            self.first_epoch = _first_epoch_leaves(loader)
            if self.first_epoch is None and self._trainer is not None and self._trainer.world_size > 1:
                raise PoLError("ProofOfLearning under DDP needs shared memory for the first epoch's sample hashes")
        self.recorder = instrument_loader(loader, self.seed(), self._data_epoch, self.first_epoch)
        self.loader = loader
        return loader

    def _data_epoch(self) -> int:
        """The epoch of the sample seeds of an iteration that starts now.

        It is the epoch Lightning gives samplers (``set_epoch``). The first
        iteration after a resume is created before Lightning restores its loop
        counters, so it takes the epoch saved in the callback's state instead.
        """
        if self._resume_epoch is not None:
            epoch, self._resume_epoch = self._resume_epoch, None
        else:
            assert self._trainer is not None
            epoch = self._trainer.fit_loop.epoch_progress.current.processed
        self._iter_epoch = epoch
        return epoch

    def next_data_epoch(self) -> int | None:
        """The seed epoch of the iteration a resume from here starts (saved in Lightning checkpoints)."""
        if self._iter_epoch is None or self._trainer is None:
            return None
        finished = self._trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        return self._iter_epoch + 1 if finished else self._iter_epoch

    def is_training_loader(self, loader: Any) -> bool:
        return self.recorder is not None and loader is self.loader

    @property
    def dataset(self) -> Any:
        """The user's training dataset (inside the seeding wrapper)."""
        return self.loader.dataset.dataset

    def trained(self, epoch: int, indices: list[int]) -> None:
        """A batch reached ``training_step``: in epoch 0 its samples' hashes are the committed leaves."""
        if epoch == 0 and self.first_epoch is not None:
            self.first_epoch.trained(indices)

    def take_first_epoch(self) -> FirstEpochLeaves:
        """Stop hashing fetched samples, and hand over the hashes of epoch 0."""
        collector, self.first_epoch = self.first_epoch, None
        assert collector is not None and self.loader is not None
        self.loader.dataset.first_epoch = None  # in-process fetches stop hashing; workers see epochs > 0 from now on
        return collector

    def detach(self) -> None:
        if self._unpatch is not None:
            self._unpatch()
            self._unpatch = None
        if self.loader is not None:
            uninstrument_loader(self.loader)
        self.loader = self.recorder = None


def _first_epoch_leaves(loader: Any) -> FirstEpochLeaves | None:
    """A table for the hashes of the first epoch's samples, or None where shared memory is not to be had."""
    try:
        size = len(loader.dataset)
    except TypeError:
        return None  # on_train_start refuses the unsized dataset
    try:
        return FirstEpochLeaves(size)
    except (RuntimeError, OSError) as e:
        log.warning("proof of learning: no shared memory for the data commitment (%s); hashing the data in a pass of its own", e)
        return None
