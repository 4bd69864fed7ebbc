"""What a DDP run's ranks send rank 0, the one process that writes the proof.

Under ``strategy="ddp"`` each of the W ranks trains on its own micro-batch of
every step, draws dropout from its own RNG stream, and hashes in epoch 0 the
samples its own DataLoader fetches. A step's gradient is the mean of the W
ranks' gradients, so the proof needs all of it: the indices of every rank's
micro-batch (the global batch, in rank order), every rank's RNG stream at
each checkpoint, and every rank's first-epoch leaves. The ranks meet at the
same points (a checkpoint, the data commitment, train end) and gather there,
never per step. Where the ranks keep their own buffers (``broadcast_buffers=False``), every rank's buffers go to
rank 0 at each checkpoint too. The verifier replays such a run as W processes under DDP again
(docs/verification.md, "DDP proofs").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch.distributed as dist

from lightning_pol.errors import PoLError
from lightning_pol.format.ddp_record import keeps_own_buffers
from lightning_pol.prover.ledger import StepLedger
from lightning_pol.runtime.collectives import broadcast_from_zero, gather_to_zero
from lightning_pol.runtime.rng import TrainingStream

T = TypeVar("T")


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


def check_ddp_recordable(trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
    """Refuse a multi-process run whose steps a W-process replay under Lightning's DDP could not repeat; returns
    whether its ranks keep their own buffers (DDP does not broadcast rank 0's), which the proof must then hold."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy):
        raise PoLError(f"ProofOfLearning records multi-process training under DDP only, not {type(strategy).__name__}")
    if getattr(strategy, "_ddp_comm_hook", None) is not None or getattr(strategy, "_model_averaging_period", None):
        raise PoLError("ProofOfLearning does not record DDP with a communication hook or model averaging (it changes "
                       "the reduced gradient, and the verifier cannot re-create it)")
    if not dist.is_available() or not dist.is_initialized():
        raise PoLError("world_size > 1 but no torch.distributed process group is initialized")
    return keeps_own_buffers(getattr(strategy, "_ddp_kwargs", {}) or {})


def global_steps(steps: list[list[list[int]]], world_size: int) -> list[list[list[int]]] | None:
    """Every rank's micro-batches of each step, in rank order (the global batch), on rank 0; None on the other ranks.

    A collective: every rank calls it at the same point, whatever it holds."""
    if world_size == 1:
        return steps
    ranks = gather_to_zero(steps, world_size)
    return [[b for rank in ranks for b in rank[s]] for s in range(len(steps))] if ranks is not None else None


def gather_rank_parts(ledger: StepLedger, stream: TrainingStream, world_size: int) -> dict[str, Any]:
    """``{"ranks": [...]}``: every rank's own part of the callback's Lightning state (its indices not yet filed, its
    RNG stream), on rank 0; ``{}`` for one process. Lightning asks every rank for its callbacks' states at once and
    saves rank 0's: so each rank of a resumed run finds its own part there. A collective."""
    if world_size == 1:
        return {}
    ranks = gather_to_zero({"pending": ledger.state_dict()["pending"], **stream.state_dict()}, world_size)
    return {"ranks": ranks} if ranks is not None else {}


def own_rank_part(state: dict[str, Any], world_size: int, rank: int) -> dict[str, Any]:
    """The callback's saved state as this rank resumes it: rank 0's, with this rank's own part (:func:`gather_rank_parts`)."""
    ranks = state.get("ranks")
    saved = len(ranks) if isinstance(ranks, list) else 1
    if saved != world_size:
        raise PoLError(f"this Lightning checkpoint's proof was written by {saved} process(es), and this run has "
                       f"{world_size}: resume with the same number of ranks, or start the proof again")
    return {**state, **ranks[rank]} if ranks is not None else dict(state)
