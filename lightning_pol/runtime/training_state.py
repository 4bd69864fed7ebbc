"""The training state a checkpoint holds, read from a live Trainer; shared by the prover and the replay."""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_pol.format import layout as pf
from lightning_pol.runtime.rng import portable_rng_states

#: The name ``torch.compile`` gives the module it wraps (``OptimizedModule._orig_mod``).
COMPILED = "_orig_mod"


def canonical_key(key: str) -> str:
    """A state_dict key as the uncompiled module names it: a proof is the same whether or not training compiled."""
    return ".".join(part for part in key.split(".") if part != COMPILED)


def model_state(module: torch.nn.Module) -> dict[str, Any]:
    """The module's ``state_dict`` under canonical keys (:func:`canonical_key`)."""
    state = module.state_dict()
    if not any(COMPILED in k.split(".") for k in state):
        return state
    return OrderedDict((canonical_key(k), v) for k, v in state.items())


def load_model_state(module: torch.nn.Module, state: dict[str, Any]) -> None:
    """``module.load_state_dict`` of a canonical state, into a module that may hold compiled submodules."""
    keys = {canonical_key(k): k for k in module.state_dict()}
    module.load_state_dict(OrderedDict((keys.get(k, k), v) for k, v in state.items()))


def load_under_live_keys(module: pl.LightningModule) -> None:
    """Make Lightning's checkpoint restore of ``module`` take a canonical state_dict: the module compiles in its
    ``setup``, which runs before the restore, so its keys then carry ``_orig_mod``."""
    original = module.on_load_checkpoint

    def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
        keys = {canonical_key(k): k for k in module.state_dict()}
        checkpoint["state_dict"] = OrderedDict((keys.get(k, k), v) for k, v in checkpoint["state_dict"].items())
        original(checkpoint)

    module.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign]


def compiled_submodules(module: torch.nn.Module) -> list[str]:
    """The submodules ``torch.compile`` wraps or compiled in place (``module.compile()``), by canonical name."""
    from torch._dynamo.eval_frame import OptimizedModule

    return [canonical_key(name) or "(module)" for name, sub in module.named_modules()
            if isinstance(sub, OptimizedModule) or getattr(sub, "_compiled_call_impl", None) is not None]


def capture_training_state(
    trainer: pl.Trainer, pl_module: pl.LightningModule, rng: dict[str, Any], step: int, batch_idx: int | None,
    peer_rng: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything needed to replay from this point: see "Checkpoint files" in docs/proof-format.md.

    ``rng`` is the training RNG stream (rank 0's under DDP); ``peer_rng`` the
    streams of DDP ranks 1..W-1, stored only for a multi-process run.
    """
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    state = {
        "format": pf.FORMAT_NAME,
        "format_version": pf.FORMAT_VERSION,
        "model": model_state(pl_module),
        "optimizers": [opt.state_dict() for opt in trainer.optimizers],
        "lr_schedulers": [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs],
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
        "rng": portable_rng_states(rng),
        "progress": {"global_step": step, "epoch": trainer.current_epoch, "batch_idx": batch_idx},
    }
    if peer_rng is not None:
        state["peer_rng"] = [portable_rng_states(r) for r in peer_rng]
    return state


def snapshot_state(state: Any) -> tuple[Any, Any]:
    """A copy of ``state`` that training cannot change, with tensors in CPU memory.

    GPU tensors are copied non-blocking into pinned memory; the returned CUDA
    event (None without GPU tensors) must be synchronized before the copy is read.
    """
    event = None

    def copy_of(obj: Any) -> Any:
        nonlocal event
        if isinstance(obj, torch.Tensor):
            t = obj.detach()
            if t.is_cuda:
                out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                out.copy_(t, non_blocking=True)
                event = event or torch.cuda.Event()
                return out
            return t.clone()
        if isinstance(obj, dict):
            items = {k: copy_of(v) for k, v in obj.items()}
            return type(obj)(items) if isinstance(obj, OrderedDict) else items
        if isinstance(obj, list):
            return [copy_of(v) for v in obj]
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return tuple(copy_of(v) for v in obj)
        return copy.deepcopy(obj)

    out = copy_of(state)
    if event is not None:
        event.record()
    return out, event
