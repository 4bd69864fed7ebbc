"""The fit's other callbacks: those the replay does not run, said at fit start and recorded in the proof.

Replay runs the user's module, not the user's other callbacks. A callback that only watches
(checkpointing, early stopping, progress bars, summaries, LR and device monitors, timers) cannot
change the trajectory and passes silently. Any other that overrides a hook able to change it (one
that runs during training and is handed the module, its gradients or its optimizer) gets one
warning line naming it and the hooks, and the proof records its class
(``training.callbacks``), so that a replay that fails can say which callback it did not run.
``ProofOfLearning(strict_callbacks=True)`` refuses such a run instead.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import (
    Callback,
    Checkpoint,
    DeviceStatsMonitor,
    EarlyStopping,
    LearningRateMonitor,
    ModelSummary,
    ProgressBar,
    SpikeDetection,
    ThroughputMonitor,
    Timer,
)
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_pol.errors import PoLError
from lightning_pol.format.classes import import_path

log = logging.getLogger(__name__)

#: Callbacks that watch training and never change it.
WATCHERS: tuple[type, ...] = (Checkpoint, EarlyStopping, ProgressBar, ModelSummary, LearningRateMonitor, DeviceStatsMonitor,
                              Timer, ThroughputMonitor, SpikeDetection)
#: Hooks that run while training and are handed what a step depends on.
TRAJECTORY_HOOKS = (
    "setup", "on_fit_start", "on_train_start", "on_train_epoch_start", "on_train_batch_start", "on_before_backward",
    "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad", "on_train_batch_end", "on_train_epoch_end",
    "on_validation_start", "on_validation_end", "on_load_checkpoint", "load_state_dict",
)


def unreplayed_callbacks(trainer: pl.Trainer) -> list[dict[str, Any]]:
    """``{"class", "hooks"}`` of each callback of ``trainer`` the replay does not run and that could change training."""
    from lightning_pol.prover.callback import ProofOfLearning

    found = []
    for callback in trainer.callbacks:
        if isinstance(callback, ProofOfLearning):
            continue
        hooks = [h for h in TRAJECTORY_HOOKS if is_overridden(h, callback, Callback)]
        if isinstance(callback, WATCHERS):  # a watcher's own hooks pass; a subclass's overrides do not
            hooks = [h for h in hooks if not _lightnings(type(callback), h)]
        if hooks:
            found.append({"class": import_path(type(callback)), "hooks": hooks})
    return found


def _lightnings(cls: type, hook: str) -> bool:
    """Whether the class that defines ``hook`` for ``cls`` is Lightning's own."""
    owner = next(c for c in cls.__mro__ if hook in vars(c))
    return owner.__module__.startswith(("lightning.", "pytorch_lightning."))


def announce(trainer: pl.Trainer, strict: bool) -> None:
    """One warning line per callback the replay will not run (a refusal, when ``strict``)."""
    for record in unreplayed_callbacks(trainer):
        what = f"callback {record['class']} overrides {', '.join(record['hooks'])}, which can change training"
        if strict:
            raise PoLError(f"{what}; the replay does not run it, so the proof could not verify: remove it, or pass "
                           f"strict_callbacks=False to record it and train anyway")
        log.warning("proof of learning: %s; the replay will not run it (a segment it changed will not verify)", what)
