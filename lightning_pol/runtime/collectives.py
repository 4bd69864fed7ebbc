"""The two collectives a multi-process run's ranks meet at: rank 0 gathers, rank 0 broadcasts.

The prover's ranks use them to send rank 0 what it writes (:mod:`lightning_pol.prover.distributed`); the ranks of a
W-process replay to send rank 0 what it hands the verifier (:class:`lightning_pol.verification.replay.ProcessRank`).
Each is a no-op for one process, so callers need not ask.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


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
