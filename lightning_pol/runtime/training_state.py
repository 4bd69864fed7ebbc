"""The training state a checkpoint holds, read from a live Trainer; shared by the prover and the replay."""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_pol.format import layout as pf
from lightning_pol.runtime.rng import portable_rng_states


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
        "model": pl_module.state_dict(),
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
