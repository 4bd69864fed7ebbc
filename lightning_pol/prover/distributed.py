"""What a DDP run's ranks send rank 0, the one process that writes the proof.

Under ``strategy="ddp"`` each of the W ranks trains on its own micro-batch of
every step, draws dropout from its own RNG stream, and hashes in epoch 0 the
samples its own DataLoader fetches. A step's gradient is the mean of the W
ranks' gradients, so the proof needs all of it: the indices of every rank's
micro-batch (the global batch, in rank order), every rank's RNG stream at
each checkpoint, and every rank's first-epoch leaves. The ranks meet at the
same points (a checkpoint, the data commitment, train end) and gather there,
never per step. The verifier replays such a step in one process
(docs/verification.md, "DDP proofs").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch.distributed as dist
from torch import nn

from lightning_pol.errors import PoLError

T = TypeVar("T")


def gather_to_zero(obj: Any, world_size: int) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order), None on the other ranks; one process: ``[obj]``."""
    if world_size == 1:
        return [obj]
    out: list[Any] | None = [None] * world_size if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_zero(obj: Any, world_size: int) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank_zero(fn: Callable[[], T], rank: int, world_size: int) -> T | None:
    """``fn()`` on rank 0 (None on the others). A :class:`PoLError` it raises is raised on every rank, so that no
    rank waits for rank 0 at a collective it will never reach."""
    result, failure = None, None
    if rank == 0:
        try:
            result = fn()
        except PoLError as e:
            failure = e
    reason = broadcast_from_zero(None if failure is None else str(failure), world_size)
    if failure is not None:
        raise failure
    if reason is not None:
        raise PoLError(reason)
    return result


def check_ddp_recordable(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Refuse a multi-process run whose steps a verifier could not replay as the mean of the ranks' gradients."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy):
        raise PoLError(f"ProofOfLearning records multi-process training under DDP only, not {type(strategy).__name__}")
    if trainer.accumulate_grad_batches != 1:
        raise PoLError("ProofOfLearning does not record DDP with accumulate_grad_batches > 1 (the ranks sum in another order)")
    if not pl_module.automatic_optimization:
        raise PoLError("ProofOfLearning records DDP with automatic optimization only")
    if getattr(strategy, "_layer_sync", None) is not None or any(isinstance(m, nn.SyncBatchNorm) for m in pl_module.modules()):
        raise PoLError("ProofOfLearning does not record DDP with sync_batchnorm (BatchNorm statistics across ranks)")
    kwargs = getattr(strategy, "_ddp_kwargs", {}) or {}
    if kwargs.get("broadcast_buffers", True) is not True:
        raise PoLError("ProofOfLearning records DDP with broadcast_buffers=True only (rank 0's buffers are the model's)")
    if getattr(strategy, "_ddp_comm_hook", None) is not None:
        raise PoLError("ProofOfLearning does not record DDP with a communication hook (it changes the reduced gradient)")
    if not dist.is_available() or not dist.is_initialized():
        raise PoLError("world_size > 1 but no torch.distributed process group is initialized")



def global_steps(steps: list[list[list[int]]], world_size: int) -> list[list[list[int]]] | None:
    """Every rank's micro-batches of each step, in rank order (the global batch), on rank 0; None on the other ranks.

    A collective: every rank calls it at the same point, whatever it holds."""
    if world_size == 1:
        return steps
    ranks = gather_to_zero(steps, world_size)
    return [[b for rank in ranks for b in rank[s]] for s in range(len(steps))] if ranks is not None else None
