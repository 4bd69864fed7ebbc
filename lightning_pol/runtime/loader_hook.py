"""Routing the training DataLoader through a wrapper: how the prover records it and the replay feeds it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning_pol.errors import PoLError


class UnsupportedDataError(PoLError, ValueError):
    """The training data cannot be recorded in a proof."""


def patch_train_dataloader(trainer: Any, wrap: Callable[[Any], Any]) -> Callable[[], None]:
    """Route the training DataLoader through ``wrap`` once Lightning has prepared it; returns the undo.

    Lightning builds the first training iterator inside ``fit_loop.setup_data()``
    (even from ``configure_optimizers`` via ``estimated_stepping_batches``),
    before any later hook could change the loader, so this is patched from
    ``setup``. The loader is taken where the strategy receives it
    (``strategy.process_dataloader``), after Lightning has injected its
    samplers: under DDP it re-creates the DataLoader around a
    ``DistributedSampler``, and only that loader is iterated. ``train_dataloader()``
    (or, for a loader handed to ``fit``, its data source) is patched too, to tell
    the training loader from validation loaders and to refuse anything but one DataLoader.
    """
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    source = trainer.fit_loop._data_source
    instance = source.instance
    if isinstance(instance, (pl.LightningModule, pl.LightningDataModule)):
        original, owner, name = instance.train_dataloader, instance, "train_dataloader"
    else:  # handed to fit (the training script, run again to fit, re-creates it): Lightning asks its source
        original, owner, name = source.dataloader, source, "dataloader"
    strategy = trainer.strategy
    process = strategy.process_dataloader
    requested: list[Any] = []  # a training loader returned by train_dataloader() and not yet processed

    def train_dataloader() -> Any:
        loader = original()
        if not isinstance(loader, DataLoader):
            raise UnsupportedDataError(
                f"the training data is a {type(loader).__name__}; a proof needs one torch DataLoader "
                "over a map-style dataset (from train_dataloader(), or handed to fit)"
            )
        requested[:] = [loader]
        return loader

    def process_dataloader(dataloader: Any) -> Any:
        dataloader = process(dataloader)
        if requested:
            requested.clear()
            dataloader = wrap(dataloader)
        return dataloader

    setattr(owner, name, train_dataloader)
    strategy.process_dataloader = process_dataloader

    def undo() -> None:
        owner.__dict__.pop(name, None)
        strategy.__dict__.pop("process_dataloader", None)

    return undo
