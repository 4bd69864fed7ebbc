"""How a proof names the proof of its W_0 (a warm start): the manifest's ``parent`` record.

The child's manifest records ``parent = {"identity", "final_checkpoint_sha256", "path"}``:
the parent's identity (SHA-256 of its ``manifest.json``), the digest of its
final checkpoint file, and where it was when the child was trained. W_0 of the
child equals the parent's final model state bit for bit. The prover builds the
record; the verifier follows it (:mod:`lightning_pol.verification.chain`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from lightning_pol.errors import PoLError
from lightning_pol.format.reader import ProofReader


def parent_record(parent_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The manifest's ``parent`` record naming ``parent_dir``'s proof, and the parent's final model state."""
    reader = ProofReader(parent_dir)
    if not reader.manifest.complete or not reader.checkpoints:
        raise PoLError(f"the parent proof {parent_dir} is not complete")
    final = reader.checkpoints[-1]
    state = reader.load_checkpoint(final)
    record = {
        "identity": reader.identity,
        "final_checkpoint_sha256": final.sha256,
        "path": reader.store.location if reader.local_root is None else str(reader.local_root.resolve()),
    }
    return record, state["model"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose tensors differ (dtype, shape or any bit); empty when identical."""
    def same(x: Any, y: Any) -> bool:
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            return type(x) is type(y) and not isinstance(x, torch.Tensor) and x == y
        return x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.detach().cpu(), y.detach().cpu())

    return [k for k in sorted(set(a) | set(b)) if k not in a or k not in b or not same(a[k], b[k])]
