"""The training state a checkpoint holds, read from a live Trainer; shared by the prover and the replay."""

from __future__ import annotations

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


def rank_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """This DDP rank's buffers (BatchNorm statistics) under canonical keys, copied to the CPU: what a rank that
    keeps its own (``broadcast_buffers=False``) sends rank 0 at a checkpoint."""
    return {canonical_key(k): b.detach().to("cpu", copy=True) for k, b in module.named_buffers()}


def load_rank_buffers(module: torch.nn.Module, buffers: dict[str, Any]) -> None:
    """Put a rank's own buffers (:func:`rank_buffers`) into ``module``: the same names, shapes and types, or the
    checkpoint is not this module's."""
    live = {canonical_key(k): b for k, b in module.named_buffers()}
    if set(live) != set(buffers):
        raise ValueError(f"a rank's buffers name {sorted(set(buffers) ^ set(live))[:3]}, which the module's do not")
    with torch.no_grad():
        for k, b in live.items():
            saved = buffers[k]
            if not isinstance(saved, torch.Tensor) or saved.shape != b.shape or saved.dtype != b.dtype:
                raise ValueError(f"a rank's buffer {k} is not a {b.dtype} tensor of shape {tuple(b.shape)}")
            b.copy_(saved)


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


def proof_step(trainer: pl.Trainer) -> int:
    """The proof's step: Lightning's ``global_step`` under automatic optimization; under manual optimization,
    where Lightning counts every ``optimizer.step()`` (a GAN steps two optimizers a batch), the training
    batches run (docs/proof-format.md, "Steps")."""
    if trainer.lightning_module.automatic_optimization:
        return trainer.global_step
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def capture_training_state(
    trainer: pl.Trainer, pl_module: pl.LightningModule, rng: dict[str, Any], step: int, batch_idx: int | None,
    peer_rng: list[dict[str, Any]] | None = None, callbacks: list[dict[str, Any]] | None = None,
    peer_buffers: list[dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Everything needed to replay from this point: see "Checkpoint files" in docs/proof-format.md.

    ``rng`` is the training RNG stream (rank 0's under DDP); ``peer_rng`` the
    streams of DDP ranks 1..W-1, stored only for a multi-process run; ``callbacks`` the states of the
    callbacks the replay runs (:mod:`.replayed_callbacks`), stored only when there are some; ``peer_buffers`` the
    buffers of ranks 1..W-1 (:func:`rank_buffers`), stored only for a DDP run whose ranks keep their own.
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
    if trainer.global_step != step:  # manual optimization counting more than one optimizer step a batch
        state["progress"]["optimizer_steps"] = trainer.global_step
    if peer_rng is not None:
        state["peer_rng"] = [portable_rng_states(r) for r in peer_rng]
    if callbacks:
        state["callbacks"] = callbacks
    if peer_buffers is not None:
        state["peer_buffers"] = peer_buffers
    return state


#: The suffixes ``torch.nn.utils.prune`` gives a pruned tensor's parameter and mask.
_ORIG, _MASK = "_orig", "_mask"


def pruned_like(module: torch.nn.Module, state: dict[str, Any]) -> None:
    """Reparametrize the fresh ``module`` as pruning left the one ``state`` was taken of (``weight_orig`` and
    ``weight_mask`` in place of ``weight``), so the state loads. Each pruned parameter keeps its place among its
    module's parameters: ``configure_optimizers`` then lists them in the order training's did, before pruning."""
    from torch.nn.utils import prune

    for key in state:
        if not key.endswith(_ORIG) or key[: -len(_ORIG)] + _MASK not in state:
            continue
        owner, _, name = key[: -len(_ORIG)].rpartition(".")
        sub = module.get_submodule(owner) if owner else module
        if name not in sub._parameters:
            continue
        order = list(sub._parameters)
        prune.identity(sub, name)
        params = sub._parameters
        sub._parameters = type(params)((n + _ORIG if n == name else n, params[n + _ORIG if n == name else n]) for n in order)


def effective_weights(state: dict[str, Any]) -> dict[str, Any]:
    """A model state with each pruned tensor as the network computes it (``orig * mask`` under its own name), so
    states before and after pruning compare."""
    if not any(k.endswith(_MASK) for k in state):
        return state
    out = {}
    for key, value in state.items():
        base = key[: -len(_ORIG)] if key.endswith(_ORIG) else key[: -len(_MASK)] if key.endswith(_MASK) else None
        if base is not None and base + _ORIG in state and base + _MASK in state:
            if key.endswith(_ORIG):
                out[base] = value * state[base + _MASK]
            continue
        out[key] = value
    return out


def prune_on_load(module: pl.LightningModule) -> None:
    """Make Lightning's checkpoint restore of ``module`` reparametrize it as the checkpoint was pruned
    (:func:`pruned_like`): after the setup hooks, which see it as training's saw it at fit start (unpruned)."""
    original = module.on_load_checkpoint

    def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
        pruned_like(module, checkpoint["state_dict"])
        original(checkpoint)

    module.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign]
