"""Chain of trust: a proof that starts from earlier weights names the proof of those weights.

The child's manifest records ``parent = {"identity", "final_checkpoint_sha256", "path"}``:
the parent's identity (SHA-256 of its ``manifest.json``), the digest of its
final checkpoint file, and where it was when the child was trained. W_0 of the
child must equal the parent's final model state bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lightning_pol import proof_format as pf
from lightning_pol.errors import PoLError
from lightning_pol.reader import ProofFormatError, ProofReader


def parent_record(parent_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The manifest entry naming ``parent_dir``'s proof, and the parent's final model state."""
    reader = ProofReader(parent_dir)
    if reader.manifest.get("status") != pf.STATUS_COMPLETE or not reader.checkpoints:
        raise PoLError(f"the parent proof {parent_dir} is not complete")
    final = reader.checkpoints[-1]
    state = reader.load_checkpoint(final)
    record = {
        "identity": reader.identity,
        "final_checkpoint_sha256": final["sha256"],
        "path": str(Path(parent_dir).resolve()),
    }
    return record, state["model"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose tensors differ (dtype, shape or any bit); empty when identical."""
    keys = sorted(set(a) | set(b))
    return [
        k for k in keys
        if k not in a or k not in b or a[k].dtype != b[k].dtype or a[k].shape != b[k].shape
        or not torch.equal(a[k].detach().cpu(), b[k].detach().cpu())
    ]


def find_parent(child: ProofReader, parents_dir: str | os.PathLike[str] | None) -> ProofReader | None:
    """The parent proof with the recorded identity: at its recorded path, or anywhere under ``parents_dir``."""
    parent = child.manifest.get("parent") or {}
    identity = parent.get("identity")
    candidates: list[Path] = []
    if isinstance(parent.get("path"), str):
        candidates.append(Path(parent["path"]))
    if parents_dir is not None:
        candidates.extend(p.parent for p in sorted(Path(parents_dir).rglob(pf.MANIFEST)))
    for path in candidates:
        try:
            reader = ProofReader(path)
        except (ProofFormatError, OSError):
            continue
        if reader.identity == identity:
            return reader
    return None
