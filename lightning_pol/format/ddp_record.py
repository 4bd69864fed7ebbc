"""``training.ddp``: how a multi-process proof's ranks met, written by the prover and read by the verifier.

It is what a W-process replay gives Lightning's DDP again (docs/proof-format.md, "Training settings"):
``backend`` (gloo, nccl), ``num_nodes`` and ``devices`` (the layout; the reduction depends on the world size only),
``sync_batchnorm``, and ``kwargs``, the DDP arguments that decide what is reduced, in which buckets, and whether
each rank keeps its own buffers. A proof is hostile input: :func:`parse_ddp_record` takes only those, typed.
"""

from __future__ import annotations

from typing import Any

from lightning_pol.errors import PoLError

#: The DDP arguments that shape a step's reduction or its buffers: recorded, and given to the replay's DDP.
DDP_ARGUMENTS = ("broadcast_buffers", "forward_sync_buffers", "bucket_cap_mb", "find_unused_parameters",
                 "gradient_as_bucket_view", "static_graph")
BACKENDS = ("gloo", "nccl")


def recorded_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The DDP arguments of a strategy's ``kwargs`` that the record keeps."""
    return {k: kwargs[k] for k in DDP_ARGUMENTS if k in kwargs and isinstance(kwargs[k], (bool, int, float))}


def keeps_own_buffers(kwargs: dict[str, Any]) -> bool:
    """Whether each rank keeps its own buffers: DDP does not broadcast rank 0's at every forward."""
    return kwargs.get("broadcast_buffers", True) is False or kwargs.get("forward_sync_buffers", True) is False


def parse_ddp_record(record: Any) -> dict[str, Any]:
    """The record, checked: a known backend, and only :data:`DDP_ARGUMENTS` with plain values; raises a PoLError."""
    if not isinstance(record, dict):
        raise PoLError("the proof's training.ddp is not a table")
    kwargs = record.get("kwargs") or {}
    if not isinstance(kwargs, dict) or not set(kwargs) <= set(DDP_ARGUMENTS) or not all(
            isinstance(v, (bool, int, float)) and not (isinstance(v, float) and not 0 < v < 1e6) for v in kwargs.values()):
        raise PoLError(f"the proof's DDP arguments {kwargs!r} are not among {', '.join(DDP_ARGUMENTS)} with plain values"[:300])
    if record.get("backend") not in BACKENDS:
        raise PoLError(f"the proof's DDP backend {record.get('backend')!r} is not one of {', '.join(BACKENDS)}")
    return {**record, "kwargs": dict(kwargs), "sync_batchnorm": record.get("sync_batchnorm") is True}
