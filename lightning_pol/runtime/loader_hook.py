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
