"""Which dataset indices fed each batch: a wrapper around the DataLoader's (batch) sampler.

The DataLoader asks its batch sampler for index lists in the main process and
delivers the batches in the same order (``in_order=True``), even with worker
processes, persistent workers and prefetching. So the wrapper queues every
index list it yields, and the callback pops one list per batch that actually
reaches ``training_step``. Batches that were prefetched but never trained on
(``limit_train_batches``, ``max_steps``) are dropped when the next epoch's
iteration starts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from numbers import Integral
from typing import Any

from lightning_pol.errors import PoLError


class UnsupportedDataError(PoLError, ValueError):
    """The training data cannot be recorded in a proof."""


class RecordingSampler:
    """Yields ``(epoch, index)`` keys for :class:`~lightning_pol.seeding.SeededDataset` and remembers the indices.

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
    (:class:`~lightning_pol.seeding.SeededDataset`). Returns the recorder.
    """
    from torch.utils.data import DataLoader, IterableDataset

    from lightning_pol.seeding import SeededDataset

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
    from lightning_pol.seeding import SeededDataset

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


def patch_train_dataloader(trainer: Any, wrap: Callable[[Any], Any]) -> Callable[[], None]:
    """Route the training DataLoader through ``wrap`` once Lightning has prepared it; returns the undo.

    Lightning builds the first training iterator inside ``fit_loop.setup_data()``
    (even from ``configure_optimizers`` via ``estimated_stepping_batches``),
    before any later hook could change the loader, so this is patched from
    ``setup``. The loader is taken where the strategy receives it
    (``strategy.process_dataloader``), after Lightning has injected its
    samplers: under DDP it re-creates the DataLoader around a
    ``DistributedSampler``, and only that loader is iterated. ``train_dataloader()``
    is patched too, to tell the training loader from validation loaders and
    to refuse anything but one DataLoader.
    """
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    instance = trainer.fit_loop._data_source.instance
    if not isinstance(instance, (pl.LightningModule, pl.LightningDataModule)):
        raise UnsupportedDataError(
            "the training data must come from a LightningDataModule (trainer.fit(model, datamodule=dm)) "
            "or from the module's train_dataloader(), so the verifier can re-create it; "
            "dataloaders passed to fit() directly cannot be recorded"
        )
    original = instance.train_dataloader
    strategy = trainer.strategy
    process = strategy.process_dataloader
    requested: list[Any] = []  # a training loader returned by train_dataloader() and not yet processed

    def train_dataloader() -> Any:
        loader = original()
        if not isinstance(loader, DataLoader):
            raise UnsupportedDataError(
                f"the training data is a {type(loader).__name__}; a proof needs one torch DataLoader "
                "over a map-style dataset from train_dataloader()"
            )
        requested[:] = [loader]
        return loader

    def process_dataloader(dataloader: Any) -> Any:
        dataloader = process(dataloader)
        if requested:
            requested.clear()
            dataloader = wrap(dataloader)
        return dataloader

    instance.train_dataloader = train_dataloader
    strategy.process_dataloader = process_dataloader

    def undo() -> None:
        instance.__dict__.pop("train_dataloader", None)
        strategy.__dict__.pop("process_dataloader", None)

    return undo
