"""Lightning's callbacks that change training, replayed: how each is re-created, what a checkpoint holds of it,
and how the replay puts it back where training had it.

A replayed callback runs in the replay's Trainer as it ran in training's. At every checkpoint the proof holds
its ``state_dict()`` (what Lightning's own checkpoints hold, restored the same way) and what Lightning's resume
does not restore (:class:`Adapter`): a gradient accumulation scheduler's factor and SWA's scheduler after a
mid-epoch resume, the parameters a fine-tuning callback froze. Callbacks from the project's config
(a Hydra ``_target_``, a LightningCLI ``class_path``) are re-created from it; Lightning's built-ins given in
code are re-created from the constructor arguments read off them here (:meth:`Adapter.arguments`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import (
    BackboneFinetuning,
    BaseFinetuning,
    Callback,
    GradientAccumulationScheduler,
    ModelPruning,
    StochasticWeightAveraging,
)
from lightning.pytorch.callbacks.finetuning import multiplicative
from torch.nn.modules.batchnorm import _BatchNorm
from typing_extensions import override


class Adapter:
    """What the replay of one kind of callback needs beyond Lightning's resume. The base: nothing."""

    #: Why a fit resumed from a Lightning checkpoint is not the run the proof records (None: it is).
    no_resume: str | None = None

    def arguments(self, callback: Callback) -> dict[str, Any] | None:
        """Its constructor arguments, read off it; None when they cannot be (it needs a config recipe)."""
        return None

    def capture(self, callback: Callback, trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, Any]:
        """What a checkpoint holds besides its ``state_dict()``."""
        return {}

    def restore(self, callback: Callback, trainer: pl.Trainer, module: pl.LightningModule, extra: dict[str, Any], mid_epoch: bool) -> None:
        """Put back ``extra`` as the replay resumes: at an epoch start before its hooks, mid-epoch (``mid_epoch``: the
        epoch-start hooks do not run) at the first batch."""

    def epoch_end(self, callback: Callback, module: pl.LightningModule) -> None:
        """Before the epoch-end hooks, in training and in replay alike: make what they read not depend on
        whether validation ran (the replay runs none)."""


class _Accumulation(Adapter):
    def arguments(self, callback: Callback) -> dict[str, Any]:
        assert isinstance(callback, GradientAccumulationScheduler)
        return {"scheduling": {int(k): int(v) for k, v in callback.scheduling.items()}}

    def restore(self, callback: Callback, trainer: pl.Trainer, module: pl.LightningModule, extra: dict[str, Any], mid_epoch: bool) -> None:
        assert isinstance(callback, GradientAccumulationScheduler)
        if mid_epoch:  # it sets the factor at epoch start, which a mid-epoch resume skips
            trainer.accumulate_grad_batches = callback.get_accumulate_grad_batches(trainer.current_epoch)


class _Averaging(Adapter):
    def arguments(self, callback: Callback) -> dict[str, Any] | None:
        assert isinstance(callback, StochasticWeightAveraging)
        if callback._avg_fn is not StochasticWeightAveraging.avg_fn or callback._initialized:
            return None  # an averaging function of its own: its config says which
        device = callback._device
        return {"swa_lrs": callback._swa_lrs, "swa_epoch_start": callback._swa_epoch_start,
                "annealing_epochs": callback._annealing_epochs, "annealing_strategy": callback._annealing_strategy,
                "device": None if device is None else str(device)}

    def restore(self, callback: Callback, trainer: pl.Trainer, module: pl.LightningModule, extra: dict[str, Any], mid_epoch: bool) -> None:
        if mid_epoch:  # SWA builds its scheduler at epoch start (a mid-epoch resume of Lightning's own skips it); its guards keep the rest
            callback.on_train_epoch_start(trainer, module)

    def epoch_end(self, callback: Callback, module: pl.LightningModule) -> None:
        # Its BatchNorm epoch runs no backward and steps the optimizer once on whatever gradients are left:
        # none after a validation (Lightning releases them before it), the last step's without. Released
        # here, as validation does, they are none in training and in the replay (which validates nothing).
        module.zero_grad(set_to_none=True)


class _Finetuning(Adapter):
    def arguments(self, callback: Callback) -> dict[str, Any] | None:
        if type(callback) is not BackboneFinetuning or callback.lambda_func is not multiplicative:
            return None
        names = ("unfreeze_backbone_at_epoch", "backbone_initial_ratio_lr", "backbone_initial_lr", "should_align",
                 "initial_denom_lr", "train_bn", "verbose", "rounding")
        return {n: getattr(callback, n) for n in names}

    def capture(self, callback: Callback, trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, Any]:
        # The frozen set: Lightning's resume restores the param groups, not which parameters train.
        return {"frozen": [n for n, p in module.named_parameters() if not p.requires_grad],
                "untracked": [n for n, m in module.named_modules() if isinstance(m, _BatchNorm) and not m.track_running_stats]}

    def restore(self, callback: Callback, trainer: pl.Trainer, module: pl.LightningModule, extra: dict[str, Any], mid_epoch: bool) -> None:
        frozen, untracked = set(extra.get("frozen", ())), set(extra.get("untracked", ()))
        for name, p in module.named_parameters():
            p.requires_grad_(name not in frozen)
        for name, m in module.named_modules():
            if isinstance(m, _BatchNorm):
                m.track_running_stats = name not in untracked


class _Pruning(Adapter):
    no_resume = ("Lightning's checkpoints hold its pruned weights made permanent, without the masks, so a resumed run "
                 "prunes afresh: it is not the run the proof records; train it without resuming")

    def arguments(self, callback: Callback) -> dict[str, Any] | None:
        assert isinstance(callback, ModelPruning)
        from lightning.pytorch.callbacks.pruning import _PYTORCH_PRUNING_METHOD

        # The name it was given: the method it made of it is named after the class (L1Unstructured).
        name = next((n for n, m in _PYTORCH_PRUNING_METHOD.items() if m.__name__ == callback._pruning_method_name), None)
        plain = (callback.amount, callback._apply_pruning, callback._use_lottery_ticket_hypothesis)
        if (name is None or not name.startswith("l") or name.endswith("_structured") or callback._parameters_to_prune
                or callback._resample_parameters
                or not all(isinstance(v, (bool, int, float)) for v in plain)):
            # A method, parameter list or schedule given as objects: its config says which. Random pruning draws
            # from the global RNG between steps, which a replay does not reproduce.
            return None
        return {"pruning_fn": name, "parameter_names": list(callback._parameter_names),
                "use_global_unstructured": callback._use_global_unstructured, "amount": callback.amount,
                "apply_pruning": callback._apply_pruning, "make_pruning_permanent": callback._make_pruning_permanent,
                "use_lottery_ticket_hypothesis": callback._use_lottery_ticket_hypothesis,
                "resample_parameters": callback._resample_parameters, "verbose": callback._verbose,
                "prune_on_train_epoch_end": callback._prune_on_train_epoch_end}

    def capture(self, callback: Callback, trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, Any]:
        # The lottery ticket's weights, which pruning resets the kept ones to: copied at setup from the module as
        # it was then (a replay's setup copies a fresh module's). Once reset, Lightning's copy shares the live
        # parameter's storage, and training moves both: such a tensor is recorded as None, "the live one".
        assert isinstance(callback, ModelPruning)
        return {"original": [None if kept.data_ptr() == live.data_ptr() else kept.detach() for kept, live in self._pairs(callback)]}

    def restore(self, callback: Callback, trainer: pl.Trainer, module: pl.LightningModule, extra: dict[str, Any], mid_epoch: bool) -> None:
        assert isinstance(callback, ModelPruning)
        pairs, original = self._pairs(callback), extra.get("original") or []
        if len(pairs) != len(original):
            raise ValueError(f"the proof holds {len(original)} lottery-ticket tensors, ModelPruning keeps {len(pairs)}")
        for (kept, live), value in zip(pairs, original):
            kept.data = live.data if value is None else value.to(kept.device, kept.dtype).clone()

    def epoch_end(self, callback: Callback, module: pl.LightningModule) -> None:
        # Pruning ranks the pruned tensors as the last forward computed them (orig * mask): after the last step
        # when validation ran, before it when not. Computed afresh here, they are the weights as they are.
        from torch.nn.utils.prune import BasePruningMethod

        for sub in module.modules():
            for hook in list(sub._forward_pre_hooks.values()):
                if isinstance(hook, BasePruningMethod):
                    setattr(sub, hook._tensor_name, hook.apply_mask(sub))

    @staticmethod
    def _pairs(callback: ModelPruning) -> list[tuple[Any, Any]]:
        """(kept copy, live parameter) of each tensor the callback prunes."""
        pairs = []
        for ref in (callback._original_layers or {}).values():
            for i, name in ref["names"]:
                live, _ = callback._parameters_to_prune[i]
                pairs.append((getattr(ref["data"], name), getattr(live, name + "_orig" if hasattr(live, name + "_orig") else name)))
        return pairs


#: The adapters of Lightning's callbacks that change training, by the class they handle (subclasses included).
ADAPTERS: tuple[tuple[type, Adapter], ...] = (
    (GradientAccumulationScheduler, _Accumulation()),
    (StochasticWeightAveraging, _Averaging()),
    (BaseFinetuning, _Finetuning()),
    (ModelPruning, _Pruning()),
)
_NONE = Adapter()


def replayable_callback(cls: type) -> bool:
    """Whether a proof may name ``cls`` as a callback to replay: one of Lightning's that change training
    (:data:`ADAPTERS`), or the project's own. Not this package's, nor Lightning's others (they write files
    where their arguments say, and change no training): a proof naming them is not the prover's."""
    home = cls.__module__.split(".")[0]
    if home == "lightning_pol":
        return False
    if home in ("lightning", "pytorch_lightning"):
        return any(issubclass(cls, kind) for kind, _ in ADAPTERS)
    return True


def adapter(callback: Callback) -> Adapter:
    return next((a for kind, a in ADAPTERS if isinstance(callback, kind)), _NONE)


def capture_callbacks(callbacks: list[Callback], trainer: pl.Trainer, module: pl.LightningModule) -> list[dict[str, Any]]:
    """Each replayed callback's state at this point: ``{"state": state_dict(), **what its adapter adds}``."""
    return [{"state": cb.state_dict(), **adapter(cb).capture(cb, trainer, module)} for cb in callbacks]


def lightning_states(callbacks: list[Callback], states: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``callbacks`` entry of a Lightning checkpoint: their ``state_dict``s by ``state_key``."""
    return {cb.state_key: s["state"] for cb, s in zip(callbacks, states)}


def callbacks_epoch_end(callbacks: list[Callback], module: pl.LightningModule) -> None:
    for cb in callbacks:
        adapter(cb).epoch_end(cb, module)


def restore_callbacks(callbacks: list[Callback], states: list[dict[str, Any]], trainer: pl.Trainer,
                      module: pl.LightningModule, mid_epoch: bool) -> None:
    for cb, s in zip(callbacks, states):
        adapter(cb).restore(cb, trainer, module, {k: v for k, v in s.items() if k != "state"}, mid_epoch)


class AfterAll(Callback):
    """Runs ``finish`` at the end of training after every other callback's ``on_train_end``: appended last, it
    takes the state training ended in (SWA's averaged weights, pruning made permanent), in training and in replay."""

    def __init__(self, finish: Callable[[pl.Trainer, pl.LightningModule], None]) -> None:
        self.finish = finish

    @property
    @override
    def state_key(self) -> str:
        return "lightning_pol.final_state"

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finish(trainer, pl_module)
