"""The values plateau schedulers consume: recorded, so that a replay feeds them back without validating.

Lightning steps a ``ReduceLROnPlateau`` config through the module's ``lr_scheduler_step(scheduler, metric)``
hook with the monitored metric (an epoch-interval one after ``on_train_epoch_end``, a step-interval one
after each optimizer step, once validation may have run). :class:`MonitoredValues` wraps that hook on the
module instance from ``on_train_start`` (after Lightning checked the schedulers against the class's own
hook) to teardown, and records each value a plateau config consumed, with the global step and the config's
index (docs/proof-format.md, ``monitored``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_pol.errors import PoLError
from lightning_pol.format.manifest import MONITORED_DTYPES, MonitoredValue


class MonitoredValues:
    """Records what the plateau schedulers of one fit consume; ``count`` values so far (a resumed fit's included)."""

    def __init__(self) -> None:
        self.count = 0
        self._module: pl.LightningModule | None = None
        self._saved: Any = None  # the instance's own lr_scheduler_step attribute, if it had one

    def attach(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: Callable[[MonitoredValue], None] | None,
               resumed: int | None = None) -> None:
        """Wrap ``pl_module.lr_scheduler_step`` when a plateau scheduler is configured; ``record`` (None on the
        ranks that do not write the proof) receives each consumed value. ``resumed``: the values consumed before
        the Lightning checkpoint a resumed fit started from."""
        self.count = int(resumed or 0)
        configs = trainer.lr_scheduler_configs
        if self._module is not None or not pl_module.automatic_optimization or not any(c.reduce_on_plateau for c in configs):
            return
        original = pl_module.lr_scheduler_step
        self._module, self._saved = pl_module, vars(pl_module).get("lr_scheduler_step")

        @functools.wraps(original)
        def lr_scheduler_step(scheduler: Any, metric: Any) -> None:
            original(scheduler, metric)
            index = next((i for i, c in enumerate(configs) if c.scheduler is scheduler and c.reduce_on_plateau), None)
            if index is None or metric is None:
                return  # a scheduler stepped without a metric: its own schedule, replayed as is
            value = monitored_value(trainer.global_step, index, configs[index].monitor or "", metric)
            self.count += 1
            if record is not None:
                record(value)

        pl_module.lr_scheduler_step = lr_scheduler_step  # type: ignore[method-assign]

    def detach(self) -> None:
        """Put the module's own hook back."""
        module, self._module = self._module, None
        if module is None:
            return
        if self._saved is not None:
            module.lr_scheduler_step = self._saved  # type: ignore[method-assign]
        else:
            vars(module).pop("lr_scheduler_step", None)
        self._saved = None


def monitored_value(step: int, index: int, monitor: str, metric: Any) -> MonitoredValue:
    """The record of ``metric`` (what Lightning passed the hook) as the proof stores it: exactly, for a floating
    point tensor or a float (another number is fed back as the float it converts to)."""
    dtype = None
    if isinstance(metric, torch.Tensor) and metric.numel() == 1 and str(metric.dtype).removeprefix("torch.") in MONITORED_DTYPES:
        dtype = str(metric.dtype).removeprefix("torch.")
    try:
        value = float(metric.item() if isinstance(metric, torch.Tensor) else metric)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise PoLError(f"ProofOfLearning cannot record the value of {monitor!r} the LR scheduler consumed ({type(metric).__name__}: {e})") from None
    return MonitoredValue(step, index, monitor, value, dtype)
