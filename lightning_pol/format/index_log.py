"""The index log: which dataset indices fed every optimizer step, micro-batch by micro-batch.

Three int64 tensors (docs/proof-format.md):

- ``indices``: every sample index, flat, in the order the samples were trained on;
- ``offsets``: steps + 1 boundaries; step t used ``indices[offsets[t]:offsets[t+1]]``;
- ``batch_offsets``: the boundaries of every micro-batch (a superset of
  ``offsets``), so that a replay with gradient accumulation feeds the same
  micro-batches even where batch sizes vary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from lightning_pol.format import layout as pf
from lightning_pol.format.safetensors_io import safetensors_bytes


@dataclass(frozen=True)
class IndexLog:
    indices: torch.Tensor
    offsets: torch.Tensor
    batch_offsets: torch.Tensor

    @classmethod
    def from_steps(cls, steps: Sequence[Sequence[Sequence[int]]]) -> IndexLog:
        """Build from ``steps[t] = [micro-batch indices, ...]``."""
        flat: list[int] = []
        offsets, batch_offsets = [0], [0]
        for micro_batches in steps:
            for batch in micro_batches:
                flat.extend(batch)
                batch_offsets.append(len(flat))
            offsets.append(len(flat))
        return cls(
            torch.tensor(flat, dtype=torch.int64),
            torch.tensor(offsets, dtype=torch.int64),
            torch.tensor(batch_offsets, dtype=torch.int64),
        )

    @classmethod
    def empty(cls) -> IndexLog:
        return cls.from_steps([])

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> IndexLog:
        """Validate and wrap the tensors of an index-log file; ``ValueError`` if malformed."""
        try:
            idx, off, boff = (tensors[k] for k in (pf.INDICES_KEY, pf.OFFSETS_KEY, pf.BATCH_OFFSETS_KEY))
        except KeyError as e:
            raise ValueError(f"missing tensor {e}") from None
        if len(tensors) != 3:
            raise ValueError(f"tensors other than the three of an index log: {sorted(set(tensors) - {pf.INDICES_KEY, pf.OFFSETS_KEY, pf.BATCH_OFFSETS_KEY})[:3]}")
        for name, t in ((pf.INDICES_KEY, idx), (pf.OFFSETS_KEY, off), (pf.BATCH_OFFSETS_KEY, boff)):
            if t.dtype != torch.int64 or t.dim() != 1:
                raise ValueError(f"{name} must be a 1-d int64 tensor")
        for name, o in ((pf.OFFSETS_KEY, off), (pf.BATCH_OFFSETS_KEY, boff)):
            if len(o) == 0 or o[0].item() != 0 or o[-1].item() != len(idx) or bool((o[1:] < o[:-1]).any()):
                raise ValueError(f"{name} are not boundaries of the indices")
        if not bool(torch.isin(off, boff).all()):
            raise ValueError("a step boundary is not a micro-batch boundary")
        return cls(idx, off, boff)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {
            pf.INDICES_KEY: self.indices.contiguous(),
            pf.OFFSETS_KEY: self.offsets.contiguous(),
            pf.BATCH_OFFSETS_KEY: self.batch_offsets.contiguous(),
        }

    def to_bytes(self) -> bytes:
        """The index-log file (``batches.safetensors``, or a chunk) of this log."""
        return safetensors_bytes(self.to_tensors())

    @property
    def steps(self) -> int:
        return len(self.offsets) - 1

    def step(self, t: int) -> torch.Tensor:
        """All sample indices of optimizer step ``t``."""
        return self.indices[self.offsets[t] : self.offsets[t + 1]]

    def micro_batches(self, t: int) -> list[list[int]]:
        """The micro-batches of step ``t``, in training order."""
        lo, hi = self.offsets[t], self.offsets[t + 1]
        first = int(torch.searchsorted(self.batch_offsets, lo))
        last = int(torch.searchsorted(self.batch_offsets, hi))
        bounds = self.batch_offsets[first : last + 1].tolist()
        return [self.indices[a:b].tolist() for a, b in zip(bounds, bounds[1:])]

    def batches_before(self, t: int) -> int:
        """Number of micro-batches trained before step ``t``."""
        return int(torch.searchsorted(self.batch_offsets, self.offsets[t]).item())

    def truncate(self, steps: int) -> IndexLog:
        end = int(self.offsets[steps])
        nb = self.batches_before(steps)
        return IndexLog(self.indices[:end].clone(), self.offsets[: steps + 1].clone(), self.batch_offsets[: nb + 1].clone())

    @staticmethod
    def concat(parts: Sequence[IndexLog]) -> IndexLog:
        if not parts:
            return IndexLog.empty()
        idx, off, boff, base = [], [torch.zeros(1, dtype=torch.int64)], [torch.zeros(1, dtype=torch.int64)], 0
        for p in parts:
            idx.append(p.indices)
            off.append(p.offsets[1:] + base)
            boff.append(p.batch_offsets[1:] + base)
            base += len(p.indices)
        return IndexLog(torch.cat(idx), torch.cat(off), torch.cat(boff))
